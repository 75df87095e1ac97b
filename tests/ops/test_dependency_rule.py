"""No module of aftercare imports itself through others, counting imports inside functions.

The contracts in pyproject.toml (``lint-imports``, run by ``make lint``) check the direction of
dependencies and cycles between the children of each package; this checks single modules too,
a package's ``__init__`` and its own children included, which sibling contracts do not see.
"""

from __future__ import annotations

import grimp


def _imports_in_cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """Each import A -> B where B leads back to A, as the whole cycle A -> B -> ... -> A."""
    return sorted(
        (importer, *chain)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if (chain := graph.find_shortest_chain(importer=imported, imported=importer))
    )


def test_no_module_of_aftercare_is_part_of_an_import_cycle() -> None:
    graph = grimp.build_graph("aftercare", cache_dir=None)
    assert _imports_in_cycles(graph) == []


def test_the_cycle_check_sees_imports_inside_functions() -> None:
    graph = grimp.build_graph("aftercare", cache_dir=None)
    # aftercare.cli.supervise imports the web server inside run_all, not at the top.
    assert "aftercare.web.server" in graph.find_modules_directly_imported_by(
        "aftercare.cli.supervise"
    )
    graph.add_import(importer="aftercare.web.server", imported="aftercare.cli.supervise")
    assert (
        "aftercare.cli.supervise",
        "aftercare.web.server",
        "aftercare.cli.supervise",
    ) in _imports_in_cycles(graph)
