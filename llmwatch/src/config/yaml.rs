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
    if let Err(e) = parser.load(&mut b, true) {
        return Err(SyntaxError {
            line: e.marker().line().max(1),
            message: e.info().to_string(),
        });
    }
    if let Some(e) = b.error {
        return Err(e);
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

enum Frame {
    Seq {
        line: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    docs: Vec<Node>,
    anchors: HashMap<usize, Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
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
                self.finish(
                    Node {
                        line,
                        value: Value::Scalar { text, plain },
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Seq {
                    line,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map {
                    line,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq { line, anchor, items }) => self.finish(
                    Node {
                        line,
                        value: Value::Seq(items),
                    },
                    anchor,
                ),
                Some(Frame::Map {
                    line,
                    anchor,
                    entries,
                    ..
                }) => self.finish(
                    Node {
                        line,
                        value: Value::Map(entries),
                    },
                    anchor,
                ),
                None => {}
            },
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(n) => {
                    // The copy keeps the anchor's line: that is where its content was written.
                    let n = n.clone();
                    self.finish(n, 0);
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

    #[test]
    fn syntax_errors_and_second_documents_have_lines() {
        let e = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.line, 3, "{e:?}");
    }
}
