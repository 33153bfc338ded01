//! The layering check (style habit 11, "imports point down"; the rules are in
//! `tests/src/layering.rs`): first the checker itself on small crates written here, then the
//! workspace, which must have no cycle between the top-level modules of any crate and must keep
//! every declared `//! Layers (bottom to top): …` order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};

use smvs_tests::layering::{scan_crate, scan_workspace, CrateGraph};

/// A crate from `(path, source)` pairs.
fn fixture(files: &[(&str, &str)]) -> CrateGraph {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, s)| (PathBuf::from(p), s.to_string()))
        .collect();
    CrateGraph::from_sources("fixture", &files)
}

fn edges(graph: &CrateGraph) -> Vec<(String, String)> {
    graph.edges().into_keys().collect()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

#[test]
fn a_clean_crate_passes() {
    let graph = fixture(&[
        (
            "src/lib.rs",
            "//! A crate.\n//! Layers (bottom to top): ids, store | codec, api\nmod ids;\nmod store;\nmod codec;\nmod api;\n",
        ),
        ("src/ids.rs", "pub struct Id;\n"),
        ("src/store.rs", "use crate::ids::Id;\npub fn get() -> Id { Id }\n"),
        ("src/codec.rs", "use crate::{ids};\n"),
        (
            "src/api/mod.rs",
            "mod handlers;\nuse crate::store;\nfn f() { let _ = crate::codec::x(); }\n",
        ),
        ("src/api/handlers.rs", "use super::super::ids::Id;\nuse super::f;\n"),
    ]);
    assert_eq!(
        edges(&graph),
        [
            pair("api", "codec"),
            pair("api", "ids"),
            pair("api", "store"),
            pair("codec", "ids"),
            pair("store", "ids"),
        ]
    );
    assert_eq!(graph.problems(), Vec::<String>::new());
}

#[test]
fn a_cycle_is_caught_and_printed() {
    let graph = fixture(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\n"),
        ("src/a.rs", "use crate::b::B;\n"),
        ("src/b.rs", "\n\nuse crate::{c::C, d};\n"),
        ("src/c/mod.rs", "mod inner;\n"),
        ("src/c/inner.rs", "fn f() -> crate::a::A { todo!() }\n"),
        ("src/d.rs", "pub struct D;\n"),
    ]);
    let problems = graph.problems();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let report = &problems[0];
    assert!(
        report.starts_with("fixture: cycle between top-level modules: a → b → c → a"),
        "{report}"
    );
    assert!(report.contains("a → b  src/a.rs:1"), "{report}");
    assert!(report.contains("b → c  src/b.rs:3"), "{report}");
    assert!(report.contains("c → a  src/c/inner.rs:1"), "{report}");
    assert!(!report.contains("b → d"), "d is not in the cycle: {report}");
}

#[test]
fn a_two_module_cycle_through_super_is_caught() {
    // `super::` from a top-level module reaches the crate root; from deeper it stays inside.
    let graph = fixture(&[
        ("src/lib.rs", "mod rpc;\nmod server;\n"),
        (
            "src/rpc.rs",
            "use super::server::Server;\nmod tests2 { use super::Local; }\n",
        ),
        ("src/server/mod.rs", "mod conn;\n"),
        (
            "src/server/conn.rs",
            "use super::super::rpc;\nuse super::Thing;\n",
        ),
    ]);
    assert_eq!(
        edges(&graph),
        [pair("rpc", "server"), pair("server", "rpc")]
    );
    let problems = graph.problems();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains("rpc → server → rpc"),
        "{}",
        problems[0]
    );
}

#[test]
fn an_upward_import_against_the_declared_order_is_named() {
    let graph = fixture(&[
        (
            "src/lib.rs",
            "//! Layers (bottom to top): model, session, calls | config, router\n",
        ),
        ("src/model.rs", "use crate::session::Keys;\n"),
        ("src/session.rs", "\n\nfn f() { crate::calls::ring(); }\n"),
        ("src/calls.rs", "use crate::{model, config};\n"),
        ("src/config.rs", ""),
        ("src/router.rs", "use crate::calls;\n"),
    ]);
    let problems = graph.problems();
    // model → session → calls → model is also a cycle.
    assert!(
        problems[0].contains("cycle between top-level modules: calls → model → session → calls"),
        "{problems:#?}"
    );
    let layered: Vec<&String> = problems[1..].iter().collect();
    assert_eq!(
        layered,
        [
            "fixture/src/calls.rs:1: calls imports config (sideways, to the same layer: calls is on layer 3, config on layer 3)",
            "fixture/src/model.rs:1: model imports session (upward, to a higher layer: model is on layer 1, session on layer 2)",
            "fixture/src/session.rs:3: session imports calls (upward, to a higher layer: session is on layer 2, calls on layer 3)",
        ],
        "{problems:#?}"
    );
}

#[test]
fn the_declared_order_must_list_every_module() {
    let graph = fixture(&[
        ("src/lib.rs", "//! Layers (bottom to top): a, ghost\n"),
        ("src/a.rs", ""),
        ("src/b.rs", ""),
    ]);
    let problems = graph.problems();
    assert_eq!(
        problems,
        [
            "fixture: the Layers line lists ghost, which is not a top-level module",
            "fixture: the Layers line does not list b",
        ]
    );
}

#[test]
fn paths_in_strings_comments_and_tests_are_ignored() {
    let graph = fixture(&[
        ("src/lib.rs", "//! Layers (bottom to top): low, high\n"),
        (
            "src/low.rs",
            r####"
//! Mentions crate::high in a doc comment.
// use crate::high;
/* use crate::high; /* nested crate::high */ still crate::high */
const A: &str = "use crate::high;";
const B: &str = r#"crate::high "quoted" "#;
const C: &[u8] = b"crate::high";
const D: char = '"';
const E: &str = "\"crate::high";
const F: (char, &str, char) = ('\'', "crate::high", '\u{2019}');
fn lifetimes<'a>(x: &'a str) -> &'a str { x }
macro_rules! m { () => { $crate::high::f() } }
#[cfg(test)]
mod tests {
    use crate::high;
    use super::super::high as h;
}
#[cfg(test)]
use crate::high::Fixture;
"####,
        ),
        ("src/high.rs", "use crate::low;\n"),
    ]);
    assert_eq!(edges(&graph), [pair("high", "low")]);
    assert_eq!(graph.problems(), Vec::<String>::new());

    // The same code without its disguises is caught.
    let graph = fixture(&[
        ("src/lib.rs", "//! Layers (bottom to top): low, high\n"),
        (
            "src/low.rs",
            "const D: char = '\"';\nconst G: [char; 2] = ['\\'','\"'];\nuse crate::high;\n",
        ),
        ("src/high.rs", ""),
    ]);
    assert_eq!(
        graph.problems(),
        ["fixture/src/low.rs:3: low imports high (upward, to a higher layer: low is on layer 1, high on layer 2)"]
    );
}

#[test]
fn a_crate_on_disk_is_read_like_one_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("src/lib.rs", "mod a;\nmod b;\n");
    write("src/a.rs", "use crate::b;\n");
    write("src/b/mod.rs", "mod deep;\n");
    write("src/b/deep/mod.rs", "mod deeper;\n");
    write("src/b/deep/deeper.rs", "use super::super::super::a;\n");
    write("src/bin/tool.rs", "use crate::a;\n");
    let graph = scan_crate(dir.path(), "on-disk").unwrap();
    assert_eq!(
        graph.modules.iter().collect::<Vec<_>>(),
        ["a", "b"],
        "src/bin is not a module"
    );
    assert_eq!(edges(&graph), [pair("a", "b"), pair("b", "a")]);
    assert!(graph.problems()[0].starts_with("on-disk: cycle between top-level modules: a → b → a"));
}

/// The real check: every crate of this workspace.
#[test]
fn the_workspace_has_no_import_cycles_and_keeps_its_declared_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crates = scan_workspace(&root).unwrap();
    assert!(crates.len() >= 10, "read {} crates", crates.len());
    let problems: Vec<String> = crates.iter().flat_map(CrateGraph::problems).collect();
    assert!(
        problems.is_empty(),
        "the layering check found {} problem(s):\n\n{}\n",
        problems.len(),
        problems.join("\n\n")
    );
}
