//! The imports of `src/` run one way: each module may use only the modules drawn below it
//! here, never one beside or above it (so there is no loop). A test that reads the source,
//! so the drawing in `src/lib.rs` cannot drift from what the code does.

use std::collections::BTreeSet;
use std::path::Path;

/// Top to bottom: a front-end asks resolution, which asks the daemon's protocol, the AWS
/// clients and storage; below them the configuration and the pure parsers.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["commands"],
    &["daemon", "frontend"],
    &["resolve"],
    &["agent"],
    &["aws"],
    &["store"],
    &["settings"],
    &["config"],
    &["oracles"],
    &["registry", "token", "tpm", "input", "journal", "exit"],
    &["clock"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a file under `src/` belongs to (`src/aws/ecr.rs` -> `aws`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `crate::<module>` that `text` names outside comments and its test module.
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut found = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (i, _) in line.match_indices("crate::") {
            let name: String = line[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong = Vec::new();
    for file in &all {
        let from = module_of(&src, file);
        if from == "lib" || from == "main" || from == "internal" {
            continue;
        }
        let Some(from_layer) = layer_of(&from) else {
            wrong.push(format!(
                "{}: module {from} is not in LAYERS",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for to in imports(&text) {
            if to == from {
                continue;
            }
            // Items of the crate root (`crate::VERSION`, `crate::version_line`) are not modules.
            let Some(to_layer) = layer_of(&to) else {
                continue;
            };
            if to_layer <= from_layer {
                wrong.push(format!(
                    "{}: {from} uses {to}, which is not below it",
                    file.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    let text =
        "use crate::daemon::schedule;\n// crate::cli in a comment\n#[cfg(test)]\nuse crate::cli;";
    assert_eq!(
        imports(text).into_iter().collect::<Vec<_>>(),
        vec!["daemon".to_owned()]
    );
    assert!(layer_of("daemon") < layer_of("resolve"));
}
