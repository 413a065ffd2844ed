//! A YAML tree that remembers the line of every node.
//!
//! The high-level loaders of YAML crates drop positions, and a problem report that cannot say
//! where the mistake is sends the operator hunting; so the tree is built here from the parser's
//! events, which carry a `Marker`. Scalars stay text (with whether they were quoted): each key
//! decides how to read its value, so `08:00` is a time, not YAML 1.1's sexagesimal 480.
use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::{Marker, TScalarStyle},
};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// 1-based line where the node starts.
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `plain`: written without quotes or block style, so it may be null, a number or a bool.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order; duplicates are kept so that they can be reported.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// `key:` with nothing after it, `~` or `null`: treated as "not set".
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// How the node reads in a "expected X, got Y" message.
    pub fn describe(&self) -> String {
        match &self.value {
            _ if self.is_null() => "nothing".into(),
            Value::Scalar { text, .. } => format!("{text:?}"),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }

    pub fn scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parses a stream holding at most one document; `Ok(None)` when it has none (empty file or only
/// comments).
pub(crate) fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    // Events are pulled one by one, not through `Parser::load`, which recurses once per level of
    // nesting (load_node -> load_sequence -> load_node ...): `- - - ... x` 10,000 deep (20 KB)
    // overflowed the stack. Pulling also stops at the first problem (see `MAX_DEPTH`).
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| SyntaxError {
            line: e.marker().line().max(1),
            message: e.info().to_string(),
        })?;
        let end = ev == Event::StreamEnd;
        b.on_event(ev, mark);
        if let Some(e) = b.error.take() {
            return Err(e);
        }
        if end {
            break;
        }
    }
    let mut docs = b.docs.into_iter();
    let first = docs.next();
    if let Some(second) = docs.next() {
        // A second document would be silently ignored by most loaders; say so instead.
        return Err(SyntaxError {
            line: second.line,
            message: "a second YAML document (`---`): the configuration is one document".into(),
        });
    }
    Ok(first)
}

/// Most bytes (estimated: nodes plus their text) that anchors and aliases may copy in one
/// file. An alias copies its anchored node, so anchors of aliases multiply (`b: &b [*a, *a,
/// ...]`, `c: [*b, *b, ...]`, the "billion laughs"): 352 bytes of YAML expanded to gigabytes
/// before the cap (fuzz/regressions/config_parse/billion_laughs_alias_expansion). Anchors are
/// counted too: each keeps a copy of its node, so anchors nested in anchors copy quadratically.
/// A configuration that reuses a list or two this way copies kilobytes.
const MAX_COPY_BYTES: usize = 4 << 20;

/// Deepest nesting of lists and mappings (a configuration nests 5 deep): the tree is dropped,
/// cloned and compared recursively, so its depth must be bounded (see `parse`).
const MAX_DEPTH: usize = 128;

/// Estimated bytes of a node, not counting its children.
const NODE_BYTES: usize = std::mem::size_of::<Node>();

enum Frame {
    Seq {
        line: usize,
        anchor: usize,
        /// `Builder::bytes` when the collection started.
        start: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        anchor: usize,
        start: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    docs: Vec<Node>,
    /// Anchored nodes with their estimated bytes.
    anchors: HashMap<usize, (Node, usize)>,
    /// Estimated bytes of every node built so far, alias copies included.
    bytes: usize,
    /// Estimated bytes copied for anchors and aliases.
    copied: usize,
    error: Option<SyntaxError>,
}

impl Builder {
    /// Whether `bytes` more may be copied for an anchor or alias; sets the error when not.
    fn copy(&mut self, bytes: usize, line: usize) -> bool {
        if self.copied + bytes > MAX_COPY_BYTES {
            self.error.get_or_insert(SyntaxError {
                line,
                message: format!(
                    "anchors and aliases copy more than {} MiB (aliases of aliases multiply)",
                    MAX_COPY_BYTES >> 20
                ),
            });
            return false;
        }
        self.copied += bytes;
        true
    }

    /// Whether a list or mapping may start here; sets the error when not.
    fn deeper(&mut self, line: usize) -> bool {
        if self.stack.len() >= MAX_DEPTH {
            self.error = Some(SyntaxError {
                line,
                message: format!("lists and mappings nested more than {MAX_DEPTH} deep"),
            });
            return false;
        }
        true
    }

    /// Places a complete node of `bytes` estimated bytes (children included).
    fn finish(&mut self, node: Node, anchor: usize, bytes: usize) {
        if anchor != 0 && self.copy(bytes, node.line) {
            self.anchors.insert(anchor, (node.clone(), bytes));
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line().max(1);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                // An explicit `!!str` tag makes even `null` or `8000` a string.
                let tagged_str = tag.is_some_and(|t| t.suffix.ends_with("str"));
                let plain = style == TScalarStyle::Plain && !tagged_str;
                let bytes = NODE_BYTES + text.len();
                self.bytes += bytes;
                self.finish(
                    Node {
                        line,
                        value: Value::Scalar { text, plain },
                    },
                    anchor,
                    bytes,
                );
            }
            Event::SequenceStart(_, _) | Event::MappingStart(_, _) if !self.deeper(line) => {}
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Seq {
                    line,
                    anchor,
                    start: self.bytes,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map {
                    line,
                    anchor,
                    start: self.bytes,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (line, anchor, start, value) = match self.stack.pop() {
                    Some(Frame::Seq {
                        line,
                        anchor,
                        start,
                        items,
                    }) => (line, anchor, start, Value::Seq(items)),
                    Some(Frame::Map {
                        line,
                        anchor,
                        start,
                        entries,
                        ..
                    }) => (line, anchor, start, Value::Map(entries)),
                    None => return,
                };
                self.bytes += NODE_BYTES;
                let bytes = self.bytes - start;
                self.finish(Node { line, value }, anchor, bytes);
            }
            Event::Alias(id) => match self.anchors.get(&id).map(|(_, bytes)| *bytes) {
                Some(bytes) if !self.copy(bytes, line) => {}
                Some(bytes) => {
                    // The copy keeps the anchor's line: that is where its content was written.
                    let n = self.anchors[&id].0.clone();
                    self.bytes += bytes;
                    self.finish(n, 0, bytes);
                }
                None => {
                    self.error = Some(SyntaxError {
                        line,
                        message: "alias to an unknown anchor".into(),
                    })
                }
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(line: usize, text: &str, plain: bool) -> Node {
        Node {
            line,
            value: Value::Scalar {
                text: text.into(),
                plain,
            },
        }
    }

    #[test]
    fn lines_are_one_based_and_per_node() {
        let n = parse("a: 1\nb:\n  - x\n  - 'y'\n").unwrap().unwrap();
        let Value::Map(entries) = &n.value else {
            panic!("{n:?}")
        };
        assert_eq!(entries[0].0, scalar(1, "a", true));
        assert_eq!(entries[0].1, scalar(1, "1", true));
        let Value::Seq(items) = &entries[1].1.value else {
            panic!()
        };
        assert_eq!(items[0], scalar(3, "x", true));
        assert_eq!(items[1], scalar(4, "y", false));
    }

    #[test]
    fn empty_and_comment_only_streams_have_no_document() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("# nothing\n\n").unwrap(), None);
        assert!(parse("---\n").unwrap().unwrap().is_null());
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let n = parse("a: &p [x]\nb: *p\n").unwrap().unwrap();
        let Value::Map(entries) = &n.value else { panic!() };
        assert_eq!(entries[0].1, entries[1].1);
    }

    /// The error for `text` (without printing a huge tree when there is none).
    fn rejected(text: &str) -> SyntaxError {
        match parse(text) {
            Ok(_) => panic!("accepted {} bytes", text.len()),
            Err(e) => e,
        }
    }

    #[test]
    fn nested_aliases_cannot_expand_without_bound() {
        // fuzz/regressions/config_parse/billion_laughs_alias_expansion: 10^9 nodes.
        let mut text = String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
            let refs = vec![format!("*{prev}"); 10].join(",");
            text.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let e = rejected(&text);
        assert!(e.message.contains("aliases copy more than 4 MiB"), "{e:?}");
        assert!((5..=9).contains(&e.line), "{e:?}");
        // One large scalar aliased many times is bounded the same way.
        let big = "x".repeat(64 << 10);
        let e = rejected(&format!("a: &a {big}\nb: [{}]\n", vec!["*a"; 100].join(",")));
        assert!(e.message.contains("aliases copy"), "{e:?}");
        // So are anchors nested in anchors, each of which keeps a copy of its node: 100 levels
        // (1 KB) copy 200 KB.
        let nested: String = (0..50)
            .map(|i| {
                let opens: String = (0..100).map(|j| format!("&a{i}_{j} [")).collect();
                format!("k{i}: {opens}x{}\n", "]".repeat(100))
            })
            .collect();
        let e = rejected(&nested);
        assert!(e.message.contains("aliases copy"), "{e:?}");
        // Reusing a list a few times is fine.
        let n = parse("a: &p [x, y]\nb: *p\nc: [*p, *p]\n").unwrap().unwrap();
        let Value::Map(entries) = &n.value else { panic!() };
        assert_eq!(entries[1].1, entries[0].1);
        assert_eq!(entries[2].1.value, Value::Seq(vec![entries[0].1.clone(); 2]));
    }

    #[test]
    fn nesting_is_bounded() {
        // 10,000 levels overflowed the stack (yaml-rust2's `Parser::load` recurses per level).
        let e = rejected(&format!("{}x\n", "- ".repeat(100_000)));
        assert_eq!(
            e,
            SyntaxError {
                line: 1,
                message: "lists and mappings nested more than 128 deep".into()
            }
        );
        let e = rejected(&format!("a: {}1{}\n", "{a: ".repeat(200), "}".repeat(200)));
        assert!(e.message.contains("nested more than 128 deep"), "{e:?}");
        assert!(parse(&format!("{}x\n", "- ".repeat(MAX_DEPTH))).is_ok());
    }

    #[test]
    fn syntax_errors_and_second_documents_have_lines() {
        let e = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.line, 3, "{e:?}");
    }
}
