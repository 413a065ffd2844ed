//! The rule tables of README.md and docs/configuration.md against the registry: a rule id,
//! count or default severity the docs state is one users rely on, so a drift fails here.
use super::ALL;
use crate::config::Config;

const README: &str = include_str!("../../../README.md");
const CONFIGURATION: &str = include_str!("../../../docs/configuration.md");

/// The rows of the first Markdown table after the line containing `heading`: each row's cells,
/// trimmed, without the header and separator rows.
fn table_after(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("the docs no longer contain {heading:?}"));
    doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// `` `weight.tamper` `` → `weight.tamper`.
fn code(cell: &str) -> &str {
    cell.trim_matches('`')
}

#[test]
fn readme_states_the_number_of_rules_the_registry_has() {
    let stated: usize = README
        .split_once("Rules shipped on by default (")
        .and_then(|(_, rest)| rest.split_once(" ids"))
        .and_then(|(n, _)| n.parse().ok())
        .expect("README: \"Rules shipped on by default (N ids\"");
    assert_eq!(
        stated,
        ALL.len(),
        "README says {stated} rule ids, the registry has {}",
        ALL.len()
    );
}

#[test]
fn the_rule_tables_list_every_registered_rule_in_order_with_its_default_severity() {
    let defaults = Config::default();
    let registered: Vec<&str> = ALL.iter().map(|id| id.as_str()).collect();
    for (doc, heading) in [
        ("README.md", "Rules shipped on by default"),
        ("docs/configuration.md", "| rule id | severity |"),
    ] {
        let text = if doc == "README.md" { README } else { CONFIGURATION };
        let rows = table_after(text, heading);
        let listed: Vec<&str> = rows.iter().map(|r| code(&r[0])).collect();
        assert_eq!(
            listed, registered,
            "{doc}: the rule table differs from the registry"
        );
        for (row, id) in rows.iter().zip(ALL) {
            let severity = defaults.rules.common(*id).severity.as_str();
            assert!(
                row[1].starts_with(severity),
                "{doc}: {id} is listed as {:?}, its default severity is {severity}",
                row[1]
            );
        }
    }
}
