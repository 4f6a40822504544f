"""The house has no import circles (issue 26): no module of mlpvision imports, directly or through others, a module
that imports it back, and no submodule imports the package root (which imports everything). Function-level imports
count, as they do for import-linter's layers contract in `.importlinter` (`make lint`)."""
from __future__ import annotations

import pytest

grimp = pytest.importorskip('grimp')


def _circles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    mods = sorted(graph.modules)
    adj = {m: sorted(set(graph.find_modules_directly_imported_by(m)) & set(mods)) for m in mods}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in mods:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter[0]
                counter[0] += 1
                stack.append(v)
                on.add(v)
            if i < len(adj[v]):
                work.append((v, i + 1))
                w = adj[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            for w in adj[v]:
                if w in on:
                    low[v] = min(low[v], low[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_circles():
    graph = grimp.build_graph('mlpvision')
    assert _circles(graph) == []


def test_circle_finder_finds_a_circle():
    class Graph:
        modules = {'a', 'b', 'c'}

        @staticmethod
        def find_modules_directly_imported_by(m):
            return {'a': {'b'}, 'b': {'a'}, 'c': {'a'}}[m]

    assert _circles(Graph) == [['a', 'b']]


def test_no_submodule_imports_the_package_root():
    graph = grimp.build_graph('mlpvision')
    importers = sorted(m for m in graph.find_modules_that_directly_import('mlpvision') if m != 'mlpvision')
    assert importers == []
