//! The shape of otpd, checked: the modules of `otpd/src` and the `crate::`,
//! `super::` and `self::` paths between them (production code only: items
//! under `#[cfg(test)]` are left out) must form no cycle, no door may reach
//! into another door, the core and the store know no door, and nothing
//! outside the store names a backend.
//!
//! `cargo test -p otpd --test module_graph -- --nocapture` prints the graph's
//! figures. `OTPD_GRAPH_SRC=/some/checkout/otpd/src` measures another tree
//! (an older commit, say) and prints its figures without asserting.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// The doors: each depends on the core, never on another door.
const DOORS: &[&str] = &["pam", "fleet::link", "fleet::agent", "admin::socket", "admin::dbus", "web"];
/// The backends: named by nothing outside `store` (the choice is made
/// once, in `store::db`).
const BACKENDS: &[&str] = &["store::sqlite", "store::postgres", "store::pgfast", "store::schema", "store::sql"];
/// What the doors stand on: these depend on no door (nor on the daemon).
const BELOW_DOORS: &[&str] = &["core", "store", "login", "admin::ops", "notify", "import"];

type Module = String;

struct Graph {
    modules: BTreeSet<Module>,
    /// module -> modules it names, with one line that names each.
    edges: BTreeMap<Module, BTreeMap<Module, String>>,
}

fn module_of(root: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    if parts.is_empty() {
        "crate".into()
    } else {
        parts.join("::")
    }
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "bin") {
                files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") && p.file_name().is_some_and(|n| n != "main.rs") {
            out.push(p);
        }
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string().trim() == "test"))
}

struct Paths<'a> {
    here: &'a str,
    modules: &'a BTreeSet<Module>,
    found: Vec<Vec<String>>,
}

impl Paths<'_> {
    /// The module a path names, if it names one of this crate's.
    fn resolve(&self, segs: &[String]) -> Option<Module> {
        let first = segs.first()?;
        let mut base: Vec<String> = match first.as_str() {
            "crate" => vec![],
            "self" => self.own(),
            "super" => {
                let mut b = self.own();
                b.pop();
                b
            }
            // A child module named without `self::`.
            _ => {
                let mut b = self.own();
                b.push(first.clone());
                if !self.modules.contains(&b.join("::")) {
                    return None;
                }
                b.pop();
                b
            }
        };
        let rest = if matches!(first.as_str(), "crate" | "self" | "super") { &segs[1..] } else { segs };
        let mut rest = rest.iter().peekable();
        while rest.peek().is_some_and(|s| *s == "super") {
            base.pop();
            rest.next();
        }
        let mut best = if base.is_empty() { "crate".to_string() } else { base.join("::") };
        for s in rest {
            base.push(s.clone());
            let m = base.join("::");
            if self.modules.contains(&m) {
                best = m;
            } else {
                break;
            }
        }
        Some(best)
    }

    fn own(&self) -> Vec<String> {
        if self.here == "crate" {
            vec![]
        } else {
            self.here.split("::").map(String::from).collect()
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.found.push(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                self.found.push(full);
            }
            syn::UseTree::Glob(_) => self.found.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// `crate::a::b` inside a macro's tokens (`tracing::info!(.., crate::x::f())`).
    fn tokens(&mut self, ts: proc_macro2::TokenStream) {
        let flat: Vec<proc_macro2::TokenTree> = ts.into_iter().collect();
        let mut i = 0;
        while i < flat.len() {
            if let proc_macro2::TokenTree::Group(g) = &flat[i] {
                self.tokens(g.stream());
            }
            if let proc_macro2::TokenTree::Ident(id) = &flat[i] {
                if id == "crate" || id == "super" {
                    let mut segs = vec![id.to_string()];
                    let mut j = i + 1;
                    while j + 2 < flat.len() + 1 {
                        let sep = matches!((&flat.get(j), &flat.get(j + 1)),
                            (Some(proc_macro2::TokenTree::Punct(a)), Some(proc_macro2::TokenTree::Punct(b)))
                                if a.as_char() == ':' && b.as_char() == ':');
                        match (sep, flat.get(j + 2)) {
                            (true, Some(proc_macro2::TokenTree::Ident(n))) => {
                                segs.push(n.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    self.found.push(segs);
                    i = j;
                    continue;
                }
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Paths<'_> {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        let attrs = match i {
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Impl(m) => &m.attrs,
            syn::Item::Use(m) => &m.attrs,
            syn::Item::Const(m) => &m.attrs,
            syn::Item::Static(m) => &m.attrs,
            syn::Item::Struct(m) => &m.attrs,
            syn::Item::Enum(m) => &m.attrs,
            syn::Item::Trait(m) => &m.attrs,
            syn::Item::Type(m) => &m.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => return syn::visit::visit_item(self, i),
        };
        if is_cfg_test(attrs) {
            return;
        }
        if let syn::Item::Use(u) = i {
            return self.use_tree(&mut vec![], &u.tree);
        }
        syn::visit::visit_item(self, i)
    }

    fn visit_impl_item(&mut self, i: &'ast syn::ImplItem) {
        if let syn::ImplItem::Fn(f) = i {
            if is_cfg_test(&f.attrs) {
                return;
            }
        }
        syn::visit::visit_impl_item(self, i)
    }

    fn visit_stmt(&mut self, s: &'ast syn::Stmt) {
        if let syn::Stmt::Local(l) = s {
            if is_cfg_test(&l.attrs) {
                return;
            }
        }
        syn::visit::visit_stmt(self, s)
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.found.push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p)
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m)
    }
}

fn graph(root: &Path) -> Graph {
    let mut all = Vec::new();
    files(root, &mut all);
    let modules: BTreeSet<Module> = all.iter().map(|f| module_of(root, f)).collect();
    let mut edges = BTreeMap::new();
    for f in &all {
        let here = module_of(root, f);
        let text = std::fs::read_to_string(f).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let mut v = Paths { here: &here, modules: &modules, found: Vec::new() };
        v.visit_file(&ast);
        let mut to: BTreeMap<Module, String> = BTreeMap::new();
        for segs in std::mem::take(&mut v.found) {
            if let Some(m) = v.resolve(&segs) {
                if m != here && m != "crate" {
                    to.entry(m).or_insert_with(|| segs.join("::"));
                }
            }
        }
        edges.insert(here, to);
    }
    Graph { modules, edges }
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<Module>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(next) = t.g.edges.get(v) {
            for w in next.keys() {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low[v];
                    t.low.insert(v, lv.min(lw));
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low[v];
                    t.low.insert(v, lv.min(iw));
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on: BTreeSet::new(), out: vec![] };
    for m in &g.modules {
        if !t.index.contains_key(m.as_str()) {
            visit(&mut t, m);
        }
    }
    t.out
}

/// The longest chain of imports, on the graph of cycles collapsed.
fn longest_chain(g: &Graph, cycles: &[Vec<Module>]) -> Vec<Module> {
    let mut rep: BTreeMap<&str, String> = BTreeMap::new();
    for c in cycles {
        let name = format!("{{{}}}", c.join(", "));
        for m in c {
            rep.insert(m, name.clone());
        }
    }
    let node = |m: &str| rep.get(m).cloned().unwrap_or_else(|| m.to_string());
    let mut next: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in &g.edges {
        for t in to.keys() {
            let (a, b) = (node(from), node(t));
            if a != b {
                next.entry(a).or_default().insert(b);
            }
        }
    }
    fn best(
        n: &str,
        next: &BTreeMap<String, BTreeSet<String>>,
        memo: &mut BTreeMap<String, Vec<String>>,
    ) -> Vec<String> {
        if let Some(c) = memo.get(n) {
            return c.clone();
        }
        let mut longest = vec![];
        for m in next.get(n).into_iter().flatten() {
            let c = best(m, next, memo);
            if c.len() > longest.len() {
                longest = c;
            }
        }
        let mut chain = vec![n.to_string()];
        chain.extend(longest);
        memo.insert(n.to_string(), chain.clone());
        chain
    }
    let mut memo = BTreeMap::new();
    let mut longest = vec![];
    for m in g.modules.iter().map(|m| node(m)).collect::<BTreeSet<_>>() {
        let c = best(&m, &next, &mut memo);
        if c.len() > longest.len() {
            longest = c;
        }
    }
    longest
}

fn under(m: &str, prefix: &str) -> bool {
    m == prefix || m.starts_with(&format!("{prefix}::"))
}

fn report(g: &Graph) -> Vec<Vec<Module>> {
    let cycles = cycles(g);
    let edges: usize = g.edges.values().map(BTreeMap::len).sum();
    println!("{} modules, {edges} imports between them, {} cycle(s)", g.modules.len(), cycles.len());
    for c in &cycles {
        println!("  cycle: {{{}}}", c.join(", "));
    }
    if std::env::var_os("OTPD_GRAPH_EDGES").is_some() {
        for (from, to) in &g.edges {
            println!("  {from} -> {}", to.iter().map(|(t, l)| format!("{t} ({l})")).collect::<Vec<_>>().join(", "));
        }
    }
    let chain = longest_chain(g, &cycles);
    println!("longest chain ({} modules): {}", chain.len(), chain.join(" -> "));
    cycles
}

#[test]
fn otpds_modules_form_no_cycle_and_no_door_reaches_into_another() {
    if let Some(other) = std::env::var_os("OTPD_GRAPH_SRC") {
        report(&graph(Path::new(&other)));
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&root);
    let cycles = report(&g);
    assert!(cycles.is_empty(), "import cycles among otpd's modules: {cycles:?}");
    let mut wrong = Vec::new();
    for (from, to) in &g.edges {
        for (t, line) in to {
            let door_of = |m: &str| DOORS.iter().find(|d| under(m, d)).copied();
            if let (Some(a), Some(b)) = (door_of(from), door_of(t)) {
                if a != b {
                    wrong.push(format!("door {from} uses door {t} ({line})"));
                }
            }
            if BACKENDS.contains(&t.as_str()) && !under(from, "store") {
                wrong.push(format!("{from} names a backend: {t} ({line})"));
            }
            if BELOW_DOORS.iter().any(|b| under(from, b)) && (door_of(t).is_some() || t == "daemon") {
                wrong.push(format!("{from}, below the doors, uses {t} ({line})"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for d in DOORS.iter().chain(BELOW_DOORS) {
        assert!(g.modules.iter().any(|m| under(m, d)), "no module {d}: update this test with the tree");
    }
}

/// The checker itself: a cycle, a test module and a path in a macro are told apart.
#[test]
fn the_checker_sees_a_cycle_through_use_lines_paths_and_macros() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("store")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a; pub mod b; pub mod store;").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::X;\n#[cfg(test)]\nmod tests { use crate::store::Z; }").unwrap();
    std::fs::write(src.join("b.rs"), "fn f() { tracing::info!(\"{}\", crate::store::y()); }").unwrap();
    std::fs::write(src.join("store/mod.rs"), "pub mod sqlite; pub use sqlite::Y;").unwrap();
    std::fs::write(src.join("store/sqlite.rs"), "fn g() { super::super::a::h(); }").unwrap();
    let g = graph(src);
    assert_eq!(g.edges["a"].keys().collect::<Vec<_>>(), ["b"], "a test module's import is not production");
    assert_eq!(g.edges["b"].keys().collect::<Vec<_>>(), ["store"]);
    assert_eq!(g.edges["store"].keys().collect::<Vec<_>>(), ["store::sqlite"]);
    assert_eq!(g.edges["store::sqlite"].keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(cycles(&g), vec![vec!["a", "b", "store", "store::sqlite"]]);
    std::fs::write(src.join("store/sqlite.rs"), "fn g() {}").unwrap();
    let g = graph(src);
    assert!(cycles(&g).is_empty());
    assert_eq!(longest_chain(&g, &[]), ["a", "b", "store", "store::sqlite"]);
}
