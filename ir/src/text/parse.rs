//! The parser: one statement per line, rebuilt through the [`Graph`] API so
//! every node's type is inferred again and checked against the printed one.

use super::attrs::{build_op, int, Attrs, Value};
use super::lex::{lex_line, Tok};
use crate::constant::Constant;
use crate::error::IrError;
use crate::graph::{Buffer, Graph, NodeId, Placement};
use crate::ops::Op;
use crate::types::{DType, TensorType};
use std::collections::HashMap;

/// Parse the text form (see the [module docs](super)) back into a graph.
///
/// Constants come back unbound (shape only). Every error is an
/// [`IrError::Parse`] carrying the 1-based line; errors about a node or a
/// constant (a shape rule that fails, a printed type that differs from the
/// inferred one, a duplicate name) name it in the message. The result is
/// not run through [`crate::verify::verify`]: a graph without outputs parses.
pub fn parse(text: &str) -> Result<Graph, IrError> {
    let mut p = Parser::default();
    let mut last = 0;
    for (i, line) in text.lines().enumerate() {
        last = i + 1;
        let toks = lex_line(line).map_err(|message| IrError::Parse {
            line: last,
            message,
        })?;
        if toks.is_empty() {
            continue;
        }
        let mut c = Cursor {
            toks,
            pos: 0,
            line: last,
        };
        p.statement(&mut c)?;
    }
    let missing = match p.state {
        State::Done => return Ok(p.graph),
        State::Header => "expected `graph <name> {`",
        State::Body => "expected `return` and `}`",
        State::Returned => "expected `}`",
    };
    Err(IrError::Parse {
        line: last.max(1),
        message: format!("unexpected end of input: {missing}"),
    })
}

#[derive(Debug, Default, PartialEq)]
enum State {
    #[default]
    Header,
    Body,
    Returned,
    Done,
}

#[derive(Debug, Default)]
struct Parser {
    state: State,
    graph: Graph,
    /// Nodes defined so far (the graph's own lookup is a linear scan).
    names: HashMap<String, NodeId>,
}

impl Parser {
    fn statement(&mut self, c: &mut Cursor) -> Result<(), IrError> {
        match self.state {
            State::Header => {
                c.keyword("graph")?;
                self.graph.name = c.name("a graph name")?;
                c.expect('{')?;
                self.state = State::Body;
            }
            State::Body => match c.peek() {
                Some(Tok::Word(w)) if w == "const" => self.constant(c)?,
                Some(Tok::Word(w)) if w == "arena" => self.arena(c)?,
                Some(Tok::Word(w)) if w == "buffer" => self.buffer(c)?,
                Some(Tok::Word(w)) if w == "return" => {
                    self.ret(c)?;
                    self.state = State::Returned;
                }
                Some(Tok::Node(_)) => self.node(c)?,
                Some(Tok::Punct('}')) => {
                    return Err(c.err("missing `return` before `}`".into()));
                }
                _ => return Err(c.unexpected("`const`, `%name = ...` or `return`")),
            },
            State::Returned => {
                c.expect('}')?;
                self.state = State::Done;
            }
            State::Done => return Err(c.err("text after the closing `}`".into())),
        }
        c.end()
    }

    /// `const NAME: f32[d, ...]`, optionally followed by `= <bound>`.
    fn constant(&mut self, c: &mut Cursor) -> Result<(), IrError> {
        c.keyword("const")?;
        let name = c.name("a constant name")?;
        c.expect(':')?;
        let ty = c.ty()?;
        if ty.dtype != DType::F32 {
            return Err(c.err(format!(
                "constant `{name}`: constants are f32, found {}",
                ty.dtype.as_str()
            )));
        }
        if c.eat('=') {
            c.expect('<')?;
            c.keyword("bound")?;
            c.expect('>')?;
        }
        let added = self.graph.add_constant(name, Constant::unbound(ty.shape));
        added.map_err(|e| c.err(e.to_string()))
    }

    /// `arena BYTES`.
    fn arena(&mut self, c: &mut Cursor) -> Result<(), IrError> {
        c.keyword("arena")?;
        if self.graph.arena_bytes.is_some() {
            return Err(c.err("`arena` given twice".into()));
        }
        let w = c.name("the arena size in bytes")?;
        self.graph.arena_bytes = Some(c.big_int(&w)?);
        Ok(())
    }

    /// `buffer NAME: type`, optionally followed by
    /// `{border=[rows, cols], offset=BYTES}` (each key optional).
    fn buffer(&mut self, c: &mut Cursor) -> Result<(), IrError> {
        c.keyword("buffer")?;
        let name = c.name("a buffer name")?;
        c.expect(':')?;
        let mut buf = Buffer::new(c.ty()?);
        if c.eat('{') && !c.eat('}') {
            let (mut border, mut offset) = (false, false);
            loop {
                let key = c.name("`border` or `offset`")?;
                c.expect('=')?;
                match key.as_str() {
                    "border" if !border => {
                        border = true;
                        let l = c.list()?;
                        let v: Vec<usize> = l
                            .iter()
                            .map(|w| int(w))
                            .collect::<Result<_, _>>()
                            .map_err(|m| c.err(m))?;
                        buf.border = <[usize; 2]>::try_from(v.as_slice())
                            .map_err(|_| c.err("`border` takes [rows, cols]".into()))?;
                    }
                    "offset" if !offset => {
                        offset = true;
                        let w = c.name("an offset in bytes")?;
                        buf.offset = Some(c.big_int(&w)?);
                    }
                    k => {
                        return Err(c.err(format!(
                            "buffer `{name}`: unknown or repeated attribute `{k}`"
                        )))
                    }
                }
                if c.eat('}') {
                    break;
                }
                c.expect(',')?;
            }
        }
        if self.graph.buffers.insert(name.clone(), buf).is_some() {
            return Err(c.err(format!("buffer `{name}` declared twice")));
        }
        Ok(())
    }

    /// `%name = op(%a, ...) {key=value, ...} : type`.
    fn node(&mut self, c: &mut Cursor) -> Result<(), IrError> {
        let Some(Tok::Node(name)) = c.next() else {
            return Err(c.unexpected("`%name`"));
        };
        c.expect('=')?;
        let mnemonic = c.name("an op name")?;
        let mut operands = Vec::new();
        if mnemonic == "input" {
            if c.peek() == Some(&Tok::Punct('(')) {
                return Err(c.err(format!("node `{name}`: `input` takes no operands")));
            }
        } else {
            c.expect('(')?;
            if !c.eat(')') {
                loop {
                    operands.push(self.operand(c, &name)?);
                    if c.eat(')') {
                        break;
                    }
                    c.expect(',')?;
                }
            }
        }
        let attrs = if c.eat('{') {
            c.attrs('}', true)?
        } else {
            Attrs::default()
        };
        c.expect(':')?;
        let printed = c.ty()?;
        let placement = if c.peek() == Some(&Tok::Word("in".into())) {
            c.pos += 1;
            let buffer = c.name("a buffer name")?;
            let at = c.list()?;
            let [w] = at.as_slice() else {
                return Err(c.err(format!("node `{name}`: expected `[channel offset]`")));
            };
            Some(Placement {
                buffer,
                channel_offset: int(w).map_err(|m| c.err(m))?,
            })
        } else {
            None
        };
        let op = build_op(&mnemonic, attrs).map_err(|m| c.err(format!("node `{name}`: {m}")))?;
        let id = match op {
            Op::Input => self.graph.add_input(name.clone(), printed.clone()),
            op => self.graph.add_node(name.clone(), op, &operands),
        }
        .map_err(|e| c.err(e.to_string()))?;
        let inferred = &self.graph.node(id).ty;
        if *inferred != printed {
            return Err(c.err(format!(
                "node `{name}`: printed type {printed} but the operands give {inferred}"
            )));
        }
        self.graph.node_mut(id).placement = placement;
        self.names.insert(name, id);
        Ok(())
    }

    fn operand(&self, c: &mut Cursor, user: &str) -> Result<NodeId, IrError> {
        match c.next() {
            Some(Tok::Node(n)) => self.names.get(&n).copied().ok_or_else(|| {
                c.err(format!(
                    "node `{user}`: operand `%{n}` is not defined on an earlier line"
                ))
            }),
            _ => Err(c.unexpected_prev("an operand `%name`")),
        }
    }

    /// `return %a, %b` (or a bare `return` for a graph without outputs).
    fn ret(&mut self, c: &mut Cursor) -> Result<(), IrError> {
        c.keyword("return")?;
        let mut outputs = Vec::new();
        if c.peek().is_some() {
            loop {
                match c.next() {
                    Some(Tok::Node(n)) => match self.names.get(&n) {
                        Some(&id) => outputs.push(id),
                        None => return Err(c.err(format!("return of undefined node `%{n}`"))),
                    },
                    _ => return Err(c.unexpected_prev("an output `%name`")),
                }
                if c.peek().is_none() {
                    break;
                }
                c.expect(',')?;
            }
        }
        self.graph.set_outputs(outputs);
        Ok(())
    }
}

/// The tokens of one line.
#[derive(Debug)]
struct Cursor {
    toks: Vec<Tok>,
    pos: usize,
    line: usize,
}

impl Cursor {
    fn err(&self, message: String) -> IrError {
        IrError::Parse {
            line: self.line,
            message,
        }
    }

    fn found(tok: Option<&Tok>) -> String {
        tok.map_or_else(|| "end of line".into(), Tok::describe)
    }

    /// "expected X, found <next token>".
    fn unexpected(&self, expected: &str) -> IrError {
        let found = Self::found(self.toks.get(self.pos));
        self.err(format!("expected {expected}, found {found}"))
    }

    /// Like [`Cursor::unexpected`], for the token just consumed.
    fn unexpected_prev(&self, expected: &str) -> IrError {
        let found = Self::found(self.pos.checked_sub(1).and_then(|i| self.toks.get(i)));
        self.err(format!("expected {expected}, found {found}"))
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn eat(&mut self, p: char) -> bool {
        let hit = self.peek() == Some(&Tok::Punct(p));
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn expect(&mut self, p: char) -> Result<(), IrError> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{p}`")))
        }
    }

    fn keyword(&mut self, k: &str) -> Result<(), IrError> {
        match self.peek() {
            Some(Tok::Word(w)) if w == k => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(self.unexpected(&format!("`{k}`"))),
        }
    }

    /// A bare or quoted name.
    fn name(&mut self, what: &str) -> Result<String, IrError> {
        match self.peek() {
            Some(Tok::Word(w) | Tok::Str(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn end(&self) -> Result<(), IrError> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(self.err(format!("unexpected {} at end of statement", t.describe()))),
        }
    }

    /// A byte count or offset (any `usize`).
    fn big_int(&self, w: &str) -> Result<usize, IrError> {
        if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.err(format!("expected a byte count, found `{w}`")));
        }
        w.parse::<usize>()
            .map_err(|_| self.err(format!("byte count {w} is out of range")))
    }

    /// `f32[1, 3, 224, 224]`.
    fn ty(&mut self) -> Result<TensorType, IrError> {
        let d = self.name("an element type")?;
        let dtype =
            DType::parse(&d).ok_or_else(|| self.err(format!("unknown element type `{d}`")))?;
        let shape = self.list()?;
        let shape = shape
            .iter()
            .map(|w| int(w))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| self.err(m))?;
        Ok(TensorType { dtype, shape })
    }

    /// `[w, ...]` of bare words.
    fn list(&mut self) -> Result<Vec<String>, IrError> {
        self.expect('[')?;
        let mut out = Vec::new();
        if self.eat(']') {
            return Ok(out);
        }
        loop {
            match self.next() {
                Some(Tok::Word(w)) => out.push(w),
                _ => return Err(self.unexpected_prev("a number")),
            }
            if self.eat(']') {
                return Ok(out);
            }
            self.expect(',')?;
        }
    }

    /// `key=value, ...` up to `close` (the opening bracket consumed).
    /// `affine(...)` values are allowed only when `top`, so nesting is
    /// one level deep.
    fn attrs(&mut self, close: char, top: bool) -> Result<Attrs, IrError> {
        let mut attrs = Attrs::default();
        if self.eat(close) {
            return Ok(attrs);
        }
        loop {
            let key = match self.next() {
                Some(Tok::Word(k)) => k,
                _ => return Err(self.unexpected_prev("an attribute name")),
            };
            self.expect('=')?;
            let value = match self.next() {
                Some(Tok::Const(n)) => Value::Const(n),
                Some(Tok::Punct('[')) => {
                    self.pos -= 1;
                    Value::List(self.list()?)
                }
                Some(Tok::Word(w)) if w == "affine" && self.peek() == Some(&Tok::Punct('(')) => {
                    if !top {
                        return Err(self.err("`affine(...)` cannot be nested".into()));
                    }
                    self.pos += 1;
                    Value::Affine(self.attrs(')', false)?)
                }
                Some(Tok::Word(w)) => Value::Word(w),
                _ => return Err(self.unexpected_prev("an attribute value")),
            };
            if !attrs.insert(key.clone(), value) {
                return Err(self.err(format!("attribute `{key}` given twice")));
            }
            if self.eat(close) {
                return Ok(attrs);
            }
            self.expect(',')?;
        }
    }
}
