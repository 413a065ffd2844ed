//! The `assets` section: files to protect beyond detected weights (datasets, adapters,
//! tokenizers, configurations, encrypted weights), each named by a glob on its path and given a
//! class (see `state::files::assets` for how they are found and watched).
use crate::state::files::{AssetClass, AssetPattern, PathGlob};

use super::{Checker, Config, Node, Value, join, values};

/// Keys of one `assets` entry.
pub(super) const ASSET: &[&str] = &["glob", "class"];

impl Checker {
    pub(super) fn assets(&mut self, node: &Node, cfg: &mut Config) {
        let Some(items) = self.items("assets", node) else {
            return;
        };
        let parsed = self.clean(|c| {
            let mut out: Vec<(&str, AssetPattern)> = Vec::new();
            for (path, n) in &items {
                let Some(a) = c.clean(|c| c.asset(path, n)).flatten() else {
                    continue;
                };
                // The first entry matching a file gives its class: a second one with the same
                // glob could never take effect.
                if let Some((first, _)) = out.iter().find(|(_, o)| o.glob == a.glob) {
                    c.bad(
                        &join(path, "glob"),
                        n,
                        format!("{:?} is already listed at {first}", a.glob.as_str()),
                    );
                }
                out.push((path, a));
            }
            out.into_iter().map(|(_, a)| a).collect::<Vec<_>>()
        });
        if let Some(a) = parsed {
            cfg.assets = a;
        }
    }

    fn asset(&mut self, path: &str, node: &Node) -> Option<AssetPattern> {
        if !matches!(node.value, Value::Map(_)) {
            self.bad(
                path,
                node,
                format!("expected an asset (glob:, class:), got {}", node.describe()),
            );
            return None;
        }
        let f = self.fields(path, node, ASSET, "assets[]");
        let glob = match f.get("glob") {
            Some(n) => self.value(&join(path, "glob"), n, "a path glob", |s| {
                PathGlob::new(s).map_err(|e| e.to_string())
            }),
            None => {
                self.bad(
                    path,
                    node,
                    "an asset needs a glob (e.g. /data/finetune/**/*.jsonl)",
                );
                None
            }
        };
        let class = match f.get("class") {
            Some(n) => self.value(&join(path, "class"), n, "an asset class", asset_class),
            None => {
                self.bad(path, node, format!("an asset needs a class ({})", class_names()));
                None
            }
        };
        let glob = glob?;
        if let Some(n) = f.get("glob")
            && let Some(broad) = BROAD_DIRS.iter().find(|d| glob.base() == std::path::Path::new(d))
        {
            self.warn(
                &join(path, "glob"),
                n,
                format!(
                    "{:?} makes the agent scan all of {broad} at start and watch every directory under it; \
                     name the directory that holds the files",
                    glob.as_str()
                ),
            );
        }
        Some(AssetPattern { glob, class: class? })
    }
}

/// System-wide directories: a glob based there scans (and inotify-watches) far more than the
/// files it means.
const BROAD_DIRS: &[&str] = &[
    "/home", "/root", "/usr", "/var", "/etc", "/tmp", "/opt", "/srv", "/mnt",
];

fn class_names() -> String {
    let names: Vec<&str> = AssetClass::ALL.iter().map(|c| c.as_str()).collect();
    names.join(", ")
}

fn asset_class(s: &str) -> Result<AssetClass, String> {
    AssetClass::from_name(s).ok_or_else(|| {
        let names = AssetClass::ALL.iter().map(|c| c.as_str());
        match values::closest(&s.to_ascii_lowercase(), names) {
            Some(c) => format!("{s:?} is not an asset class; did you mean {c:?}?"),
            None => format!("{s:?} is not an asset class ({})", class_names()),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::parse;
    use crate::config::tests::{at, problems};
    use crate::state::files::AssetClass;

    #[test]
    fn assets_parse_in_order_with_their_classes() {
        let c = parse(
            "assets: [{glob: \"/data/finetune/**/*.jsonl\", class: dataset}, \
             {glob: \"/models/**/*.enc\", class: Encrypted_Weights}]\n",
        )
        .unwrap();
        let got: Vec<(&str, AssetClass, &Path)> = c
            .assets
            .iter()
            .map(|a| (a.glob.as_str(), a.class, a.glob.base()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "/data/finetune/**/*.jsonl",
                    AssetClass::Dataset,
                    Path::new("/data/finetune")
                ),
                (
                    "/models/**/*.enc",
                    AssetClass::EncryptedWeights,
                    Path::new("/models")
                ),
            ]
        );
        // None by default, and `assets:` alone keeps the default.
        assert!(parse("").unwrap().assets.is_empty());
        assert!(parse("assets:\n").unwrap().assets.is_empty());
    }

    #[test]
    fn a_glob_over_a_system_wide_directory_is_a_warning() {
        let c = parse("assets: [{glob: \"/home/**/*.jsonl\", class: dataset}, {glob: \"/home/ml/data/*.jsonl\", class: dataset}]\n").unwrap();
        let at: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(at, ["assets[0].glob"], "{:#?}", c.warnings);
        assert!(
            c.warnings[0].message.contains("all of /home"),
            "{}",
            c.warnings[0]
        );
    }

    #[test]
    fn the_example_file_protects_assets() {
        let c = parse(include_str!("../../../../deploy/llmwatch.example.yaml")).unwrap();
        let classes: Vec<AssetClass> = c.assets.iter().map(|a| a.class).collect();
        for want in [
            AssetClass::Dataset,
            AssetClass::EncryptedWeights,
            AssetClass::Tokenizer,
        ] {
            assert!(classes.contains(&want), "{want} in {classes:?}");
        }
        assert!(
            c.assets
                .iter()
                .all(|a| a.glob.base().starts_with("/") && a.glob.base() != Path::new("/"))
        );
        assert_ne!(c.model_dirs, Vec::<PathBuf>::new());
    }

    #[test]
    fn every_bad_asset_is_named_with_its_key_path_and_line() {
        let text = "\
host: h
assets:
  - {glob: \"**/*.jsonl\", class: dataset}
  - {glob: \"/**/*.csv\", class: dataset}
  - glob: /data/ft/*.jsonl
    class: datasets
  - {glob: \"/data/[x\", class: config}
  - {class: tokenizer}
  - {glob: /models/*.enc}
  - {glob: /models/*.key, clas: config}
  - /models/*.enc
  - {glob: [/a/*], class: config}
  - {glob: \"/data/a/../b/*.json\", class: config}
  - {glob: /srv/t/*.json, class: tokenizer}
  - {glob: /srv/t/*.json, class: config}
";
        let ps = problems(text);
        let check = |path: &str, line: usize, needle: &str| {
            let p = at(&ps, path);
            assert_eq!(p.line, Some(line), "{p:?}");
            assert!(p.message.contains(needle), "{p:?} should mention {needle:?}");
        };
        check("assets[0].glob", 3, "not an absolute path");
        check("assets[1].glob", 4, "no directory before its first wildcard");
        check("assets[2].class", 6, "did you mean \"dataset\"");
        check("assets[3].glob", 7, "\"/data/[x\" is not a valid glob");
        check("assets[4]", 8, "needs a glob");
        check("assets[5]", 9, "needs a class (weights, adapter, dataset");
        check("assets[6].clas", 10, "did you mean \"class\"");
        check("assets[6]", 10, "needs a class");
        check("assets[7]", 11, "expected an asset (glob:, class:)");
        check("assets[8].glob", 12, "expected a path glob, got a list");
        check("assets[9].glob", 13, ". or ..");
        check("assets[11].glob", 15, "already listed at assets[10]");
        assert_eq!(ps.len(), 12, "{ps:#?}");
        // A single entry where a list belongs is the usual list mistake.
        let ps = problems("assets: {glob: /data/*.csv, class: dataset}\n");
        assert!(
            ps[0].path == "assets" && ps[0].message.contains("expected a list"),
            "{ps:?}"
        );
        // A key of an entry written at the top is pointed to where it belongs.
        let ps = problems("glob: /data/*.csv\n");
        assert!(ps[0].message.contains("assets[].glob"), "{ps:?}");
    }
}
