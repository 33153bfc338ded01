//! The layering check (style habit 11, "imports point down"), run by `make test` through
//! `tests/tests/layering.rs`.
//!
//! For every crate of the workspace (the `members` of the root `Cargo.toml`), the top-level
//! modules are the files `src/x.rs` and the directories `src/x/` (one module `x` when both
//! exist), leaving out `lib.rs`, `main.rs` and `src/bin/`. Every `.rs` file of a module is read
//! (a directory's files at any depth) and every path that names another top-level module makes
//! an edge of the crate's module graph:
//!
//! - `crate::x…` anywhere (in `use`, in expressions, in types), and each item of a group
//!   `crate::{x, y::z}`;
//! - `super::…` (also `super::super::…`, and groups after it), resolved from the module the code
//!   is in: the file's own module path (`src/x/a.rs` is `x::a`, `src/x/mod.rs` is `x`) plus
//!   the inline `mod name { … }` blocks around it. Only a path that climbs to the crate root
//!   names another top-level module; one that stays inside `x` is `x`'s own business.
//!
//! Comments, string and character literals are skipped, so `crate::x` written in a doc comment
//! or a message does not count; `$crate::x` (a macro's own crate) does not count either. Code
//! under `#[cfg(test)]` (an item, or a whole file with `#![cfg(test)]`) is skipped: tests may
//! reach any module to build their fixtures. A test module in a file of its own
//! (`#[cfg(test)] mod tests;`) is read unless that file starts with `#![cfg(test)]`. Not understood, and so not counted: `self::` and
//! plain relative paths (`use x::y` naming a top-level module from inside another one works
//! only from the crate root), `#[path]` attributes, macro-generated paths, other `cfg`s.
//!
//! Two rules follow.
//!
//! 1. No cycles: the graph between top-level modules must be acyclic. Each strongly connected
//!    group of modules is reported with a shortest cycle through each of its modules (each
//!    written once) and every import inside the group (each edge with the file and line of its
//!    first import): the places to cut.
//! 2. A declared order is kept. A crate may state its layers in its `lib.rs` (or `main.rs`) in
//!    one line `//! Layers (bottom to top): a, b | c, d`: commas separate layers, bottom first;
//!    `|` puts modules on the same layer. Every top-level module must be listed, once. An import
//!    of a module on a higher layer (upward) or on the same layer (sideways) is reported with
//!    its file, line and the two modules.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};

/// The line prefix that declares a crate's layers.
pub const LAYERS_PREFIX: &str = "//! Layers (bottom to top):";

/// One path in one file that names another top-level module.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Import {
    /// The file, relative to the crate's directory (`src/x/a.rs`).
    pub file: PathBuf,
    pub line: usize,
    /// The top-level module the file belongs to.
    pub from: String,
    /// The top-level module it names.
    pub to: String,
}

impl fmt::Display for Import {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} → {} ({}:{})",
            self.from,
            self.to,
            self.file.display(),
            self.line
        )
    }
}

/// A crate's top-level modules and the imports between them.
#[derive(Debug, Clone, Default)]
pub struct CrateGraph {
    /// The crate's directory as the report names it (`smvsd`).
    pub name: String,
    pub modules: BTreeSet<String>,
    /// Every import, in file and line order.
    pub imports: Vec<Import>,
    /// The `Layers` line of the crate root, if it has one (the text after the prefix).
    pub declared_layers: Option<String>,
}

impl CrateGraph {
    /// Builds the graph from sources in memory: `(path relative to the crate, text)`, e.g.
    /// `("src/lib.rs", …)`, `("src/store/mod.rs", …)`. What [`scan_crate`] does after reading
    /// the files.
    pub fn from_sources(name: &str, files: &[(PathBuf, String)]) -> CrateGraph {
        let mut graph = CrateGraph {
            name: name.to_owned(),
            ..CrateGraph::default()
        };
        for (path, _) in files {
            if let Some(module) = module_path(path).and_then(|m| m.first().cloned()) {
                graph.modules.insert(module);
            }
        }
        for (path, text) in files {
            let root = path == Path::new("src/lib.rs")
                || (path == Path::new("src/main.rs")
                    && !files.iter().any(|(p, _)| p == Path::new("src/lib.rs")));
            if root {
                graph.declared_layers = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(LAYERS_PREFIX))
                    .map(|s| s.trim().to_owned());
            }
            let Some(module) = module_path(path) else {
                continue;
            };
            for (line, to) in names_in_source(text, &module, &graph.modules) {
                graph.imports.push(Import {
                    file: path.clone(),
                    line,
                    from: module[0].clone(),
                    to,
                });
            }
        }
        graph.imports.sort();
        graph
    }

    /// Edges between modules, each with its imports.
    pub fn edges(&self) -> BTreeMap<(String, String), Vec<&Import>> {
        let mut edges: BTreeMap<(String, String), Vec<&Import>> = BTreeMap::new();
        for import in &self.imports {
            edges
                .entry((import.from.clone(), import.to.clone()))
                .or_default()
                .push(import);
        }
        edges
    }

    /// Everything wrong with this crate's layering, one entry per problem, each naming the
    /// crate; empty when the crate is clean.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.cycle_problems();
        problems.extend(self.layer_problems());
        problems
    }

    fn cycle_problems(&self) -> Vec<String> {
        let edges = self.edges();
        let mut problems = Vec::new();
        for group in strongly_connected(&self.modules, edges.keys()) {
            // One shortest cycle through each module of the group, each written once: together
            // they show every module's way back to itself.
            let mut cycles: Vec<Vec<String>> = Vec::new();
            for start in &group {
                let cycle = shortest_cycle(&group, edges.keys(), start);
                let mut key = cycle[..cycle.len().saturating_sub(1)].to_vec();
                key.sort();
                if !cycles.iter().any(|c| {
                    let mut k = c[..c.len().saturating_sub(1)].to_vec();
                    k.sort();
                    k == key
                }) {
                    cycles.push(cycle);
                }
            }
            let mut text = format!(
                "{}: cycle between top-level modules: {}",
                self.name,
                cycles.first().map(|c| c.join(" → ")).unwrap_or_default()
            );
            for cycle in cycles.iter().skip(1) {
                text.push_str(&format!("\n    and: {}", cycle.join(" → ")));
            }
            text.push_str("\n    imports inside this group (edge, first import):");
            for ((from, to), imports) in &edges {
                if group.contains(from) && group.contains(to) {
                    if let Some(first) = imports.first() {
                        text.push_str(&format!(
                            "\n      {from} → {to}  {}:{}{}",
                            first.file.display(),
                            first.line,
                            match imports.len() {
                                1 => String::new(),
                                n => format!(" (and {} more)", n - 1),
                            }
                        ));
                    }
                }
            }
            problems.push(text);
        }
        problems
    }

    fn layer_problems(&self) -> Vec<String> {
        let Some(declared) = &self.declared_layers else {
            return Vec::new();
        };
        let layers = match parse_layers(declared) {
            Ok(layers) => layers,
            Err(e) => return vec![format!("{}: {LAYERS_PREFIX} {e}", self.name)],
        };
        let mut problems = Vec::new();
        let mut layer_of = BTreeMap::new();
        for (i, layer) in layers.iter().enumerate() {
            for module in layer {
                if layer_of.insert(module.clone(), i).is_some() {
                    problems.push(format!(
                        "{}: the Layers line lists {module} twice",
                        self.name
                    ));
                }
                if !self.modules.contains(module) {
                    problems.push(format!(
                        "{}: the Layers line lists {module}, which is not a top-level module",
                        self.name
                    ));
                }
            }
        }
        let missing: Vec<&str> = self
            .modules
            .iter()
            .filter(|m| !layer_of.contains_key(*m))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{}: the Layers line does not list {}",
                self.name,
                missing.join(", ")
            ));
        }
        for import in &self.imports {
            let (Some(&from), Some(&to)) = (layer_of.get(&import.from), layer_of.get(&import.to))
            else {
                continue;
            };
            let direction = match to.cmp(&from) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => "sideways, to the same layer",
                std::cmp::Ordering::Greater => "upward, to a higher layer",
            };
            problems.push(format!(
                "{}/{}:{}: {} imports {} ({direction}: {} is on layer {}, {} on layer {})",
                self.name,
                import.file.display(),
                import.line,
                import.from,
                import.to,
                import.from,
                from + 1,
                import.to,
                to + 1
            ));
        }
        problems
    }
}

/// The layers of a `Layers` line (the text after [`LAYERS_PREFIX`]), bottom first.
pub fn parse_layers(declared: &str) -> Result<Vec<Vec<String>>, String> {
    let mut layers = Vec::new();
    for layer in declared.split(',') {
        let modules: Vec<String> = layer
            .split('|')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        if modules.is_empty() {
            continue;
        }
        if let Some(bad) = modules
            .iter()
            .find(|m| !m.chars().all(|c| c.is_alphanumeric() || c == '_'))
        {
            return Err(format!("{bad:?} is not a module name (in {declared:?})"));
        }
        layers.push(modules);
    }
    if layers.is_empty() {
        return Err("lists no module".into());
    }
    Ok(layers)
}

/// The module path of a file under `src/` (`src/x/a.rs` is `x::a`, `src/x/mod.rs` is `x`), or
/// `None` for the crate root, `src/bin/`, and anything not a `.rs` file under `src/`.
pub fn module_path(path: &Path) -> Option<Vec<String>> {
    let rest = path.strip_prefix("src").ok()?;
    if path.extension()? != "rs" {
        return None;
    }
    let mut parts: Vec<String> = rest
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?.to_owned();
    if parts.is_empty() && matches!(stem.as_str(), "lib" | "main") {
        return None;
    }
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem);
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts)
}

/// Reads a crate's sources and builds its graph. `dir` is the crate's directory; `name` is how
/// reports call it.
pub fn scan_crate(dir: &Path, name: &str) -> anyhow::Result<CrateGraph> {
    let mut files = Vec::new();
    let mut stack = vec![dir.join("src")];
    while let Some(path) = stack.pop() {
        let entries =
            std::fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))?;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let relative = path.strip_prefix(dir)?.to_path_buf();
                files.push((relative, text));
            }
        }
    }
    files.sort();
    Ok(CrateGraph::from_sources(name, &files))
}

/// The workspace members named in `root/Cargo.toml` (paths relative to `root`; no globs).
pub fn workspace_members(root: &Path) -> anyhow::Result<Vec<String>> {
    let manifest = root.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let table: toml::Table = text.parse()?;
    let members = table
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .ok_or_else(|| anyhow!("{} has no [workspace] members", manifest.display()))?;
    members
        .iter()
        .map(|m| {
            m.as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("a workspace member is not a string: {m}"))
        })
        .collect()
}

/// Every crate of the workspace at `root`, scanned.
pub fn scan_workspace(root: &Path) -> anyhow::Result<Vec<CrateGraph>> {
    workspace_members(root)?
        .iter()
        .map(|member| scan_crate(&root.join(member), member))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reading paths out of Rust source

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

/// The tokens that matter here, with their lines: identifiers, `::` and single punctuation.
/// Comments, string, byte-string, raw-string and character literals are dropped; lifetimes
/// become their bare name (harmless).
fn tokens(source: &str) -> Vec<(usize, Tok)> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Skips a "…" literal whose opening quote is at `i`; returns the index after it.
    let skip_quoted = |mut i: usize, line: &mut usize| -> usize {
        i += 1;
        while i < chars.len() {
            match chars[i] {
                '\\' => i += 1,
                '"' => return i + 1,
                '\n' => *line += 1,
                _ => {}
            }
            i += 1;
        }
        i
    };
    // Skips a raw literal (r"…", r#"…"#) whose first '#' or '"' is at `i`.
    let skip_raw = |mut i: usize, line: &mut usize| -> Option<usize> {
        let mut hashes = 0;
        while chars.get(i) == Some(&'#') {
            hashes += 1;
            i += 1;
        }
        if chars.get(i) != Some(&'"') {
            return None;
        }
        i += 1;
        while i < chars.len() {
            if chars[i] == '\n' {
                *line += 1;
            }
            if chars[i] == '"' && (0..hashes).all(|k| chars.get(i + 1 + k) == Some(&'#')) {
                return Some(i + 1 + hashes);
            }
            i += 1;
        }
        Some(i)
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            i = skip_quoted(i, &mut line);
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime / label ('a).
            if next == Some('\\') {
                // Past the quote, the backslash and the escaped character, then to the close.
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let after = chars.get(i).copied();
            match (word.as_str(), after) {
                ("b" | "c", Some('"')) => i = skip_quoted(i, &mut line),
                ("b", Some('\'')) => {
                    // A byte literal: let the '\'' branch skip it.
                }
                ("r" | "br" | "cr", Some('"' | '#')) => match skip_raw(i, &mut line) {
                    Some(end) => i = end,
                    // r#ident: a raw identifier.
                    None => {
                        let start = i + 1;
                        i = start;
                        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                            i += 1;
                        }
                        out.push((line, Tok::Ident(chars[start..i].iter().collect())));
                    }
                },
                _ => out.push((line, Tok::Ident(word))),
            }
        } else if c == ':' && next == Some(':') {
            out.push((line, Tok::PathSep));
            i += 2;
        } else {
            out.push((line, Tok::Punct(c)));
            i += 1;
        }
    }
    out
}

fn is_ident(tok: Option<&(usize, Tok)>, name: &str) -> bool {
    matches!(tok, Some((_, Tok::Ident(n))) if n == name)
}

fn is_punct(tok: Option<&(usize, Tok)>, c: char) -> bool {
    matches!(tok, Some((_, Tok::Punct(p))) if *p == c)
}

/// Whether the tokens at `i` are `#[cfg(test)]` (`inner`: `#![cfg(test)]`).
fn is_cfg_test(toks: &[(usize, Tok)], i: usize, inner: bool) -> bool {
    let mut k = i;
    if !is_punct(toks.get(k), '#') {
        return false;
    }
    k += 1;
    if inner {
        if !is_punct(toks.get(k), '!') {
            return false;
        }
        k += 1;
    }
    is_punct(toks.get(k), '[')
        && is_ident(toks.get(k + 1), "cfg")
        && is_punct(toks.get(k + 2), '(')
        && is_ident(toks.get(k + 3), "test")
        && is_punct(toks.get(k + 4), ')')
        && is_punct(toks.get(k + 5), ']')
}

/// The index after the item that starts at `i` (its attributes first): after its `;`, or
/// after the `}` that closes its body.
fn end_of_item(toks: &[(usize, Tok)], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < toks.len() {
        match &toks[i].1 {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']') => depth -= 1,
            Tok::Punct('}') => {
                depth -= 1;
                if depth <= 0 {
                    return i + 1;
                }
            }
            Tok::Punct(';') if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// The first segments of the paths in a `{ … }` group starting at `open` (the `{`): `a` and
/// `b` in `{a, b::c, self}`. Returns them with their lines, and the index after the group.
fn group_heads(toks: &[(usize, Tok)], open: usize) -> (Vec<(usize, String)>, usize) {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expecting = true;
    let mut i = open;
    while i < toks.len() {
        match &toks[i].1 {
            Tok::Punct('{') => {
                depth += 1;
                expecting = depth == 1;
            }
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return (heads, i + 1);
                }
            }
            Tok::Punct(',') if depth == 1 => expecting = true,
            Tok::Ident(name) if expecting && depth == 1 => {
                if name != "self" {
                    heads.push((toks[i].0, name.clone()));
                }
                expecting = false;
            }
            _ => expecting = false,
        }
        i += 1;
    }
    (heads, i)
}

/// Every `(line, module)` in `source` that names a top-level module of `modules` other than the
/// file's own. `module` is the file's module path (`["x", "a"]` for `src/x/a.rs`).
pub fn names_in_source(
    source: &str,
    module: &[String],
    modules: &BTreeSet<String>,
) -> Vec<(usize, String)> {
    let toks = tokens(source);
    let own = module.first().cloned().unwrap_or_default();
    let mut found = Vec::new();
    let keep = |line: usize, name: String, found: &mut Vec<(usize, String)>| {
        if name != own && modules.contains(&name) {
            found.push((line, name));
        }
    };
    // Inline `mod name {` blocks around the current token: (name, brace depth inside it).
    let mut inline: Vec<(String, i32)> = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    while i < toks.len() {
        if is_cfg_test(&toks, i, true) {
            return Vec::new();
        }
        if is_cfg_test(&toks, i, false) {
            i = end_of_item(&toks, i);
            continue;
        }
        match &toks[i].1 {
            Tok::Punct('{') => {
                depth += 1;
                if i >= 2 && is_ident(toks.get(i - 2), "mod") {
                    if let Some((_, Tok::Ident(name))) = toks.get(i - 1) {
                        inline.push((name.clone(), depth));
                    }
                }
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            Tok::Ident(word)
                if word == "crate"
                    && !(i > 0 && is_punct(toks.get(i - 1), '$'))
                    && !(i > 0 && matches!(toks.get(i - 1), Some((_, Tok::PathSep))))
                    && matches!(toks.get(i + 1), Some((_, Tok::PathSep))) =>
            {
                match toks.get(i + 2) {
                    Some((l, Tok::Ident(name))) => keep(*l, name.clone(), &mut found),
                    Some((_, Tok::Punct('{'))) => {
                        let (heads, _) = group_heads(&toks, i + 2);
                        for (l, name) in heads {
                            keep(l, name, &mut found);
                        }
                    }
                    _ => {}
                }
            }
            Tok::Ident(word)
                if word == "super"
                    && !(i > 0 && matches!(toks.get(i - 1), Some((_, Tok::PathSep)))) =>
            {
                // super :: super :: … then a name or a group.
                let mut climbs = 0;
                let mut k = i;
                while is_ident(toks.get(k), "super")
                    && matches!(toks.get(k + 1), Some((_, Tok::PathSep)))
                {
                    climbs += 1;
                    k += 2;
                }
                let here: Vec<&String> = module
                    .iter()
                    .chain(inline.iter().map(|(name, _)| name))
                    .collect();
                if climbs > 0 && climbs == here.len() {
                    match toks.get(k) {
                        Some((l, Tok::Ident(name))) => keep(*l, name.clone(), &mut found),
                        Some((_, Tok::Punct('{'))) => {
                            let (heads, _) = group_heads(&toks, k);
                            for (l, name) in heads {
                                keep(l, name, &mut found);
                            }
                        }
                        _ => {}
                    }
                }
                i = k.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Graph

/// The strongly connected groups of more than one module (Tarjan), each sorted, in order of
/// their smallest module.
pub fn strongly_connected<'a>(
    nodes: &BTreeSet<String>,
    edges: impl Iterator<Item = &'a (String, String)>,
) -> Vec<BTreeSet<String>> {
    let names: Vec<&String> = nodes.iter().collect();
    let index_of: BTreeMap<&String, usize> =
        names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for (from, to) in edges {
        if let (Some(&a), Some(&b)) = (index_of.get(from), index_of.get(to)) {
            next[a].push(b);
        }
    }
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        groups: Vec<Vec<usize>>,
    }
    fn visit(v: usize, next: &[Vec<usize>], s: &mut State) {
        s.index[v] = Some(s.counter);
        s.low[v] = s.counter;
        s.counter += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &next[v] {
            match s.index[w] {
                None => {
                    visit(w, next, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                group.push(w);
                if w == v {
                    break;
                }
            }
            s.groups.push(group);
        }
    }
    let mut s = State {
        index: vec![None; names.len()],
        low: vec![0; names.len()],
        on_stack: vec![false; names.len()],
        stack: Vec::new(),
        counter: 0,
        groups: Vec::new(),
    };
    for v in 0..names.len() {
        if s.index[v].is_none() {
            visit(v, &next, &mut s);
        }
    }
    let mut groups: Vec<BTreeSet<String>> = s
        .groups
        .into_iter()
        .filter(|g| g.len() > 1)
        .map(|g| g.into_iter().map(|i| names[i].clone()).collect())
        .collect();
    groups.sort();
    groups
}

/// A shortest cycle through `start` inside `group` (breadth first), written with `start` at
/// both ends.
pub fn shortest_cycle<'a>(
    group: &BTreeSet<String>,
    edges: impl Iterator<Item = &'a (String, String)>,
    start: &String,
) -> Vec<String> {
    let mut next: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (from, to) in edges {
        if group.contains(from) && group.contains(to) {
            next.entry(from).or_default().push(to);
        }
    }
    let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in next.get(v).map(Vec::as_slice).unwrap_or_default() {
            if w == start {
                let mut path = vec![start.clone()];
                let mut at = v;
                while at != start {
                    path.push(at.clone());
                    at = came_from.get(at).copied().unwrap_or(start);
                }
                path.push(start.clone());
                path.reverse();
                return path;
            }
            if !came_from.contains_key(w) && w != start {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    group.iter().cloned().collect()
}
