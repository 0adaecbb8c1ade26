//! A minimal pickle virtual machine for the pickles `torch.save` writes.
//!
//! It never executes anything: a global is a name, and calling it (`REDUCE`,
//! `NEWOBJ`) records a [`Obj::Call`] that the caller interprets if and when
//! it needs it; `BUILD` records the object's state (its `__dict__`: how a
//! pickled `nn.Module` holds `_modules`, `_parameters` and `_buffers`) on
//! that call. Only `collections.OrderedDict()` is evaluated (to a dict),
//! because later opcodes fill it in place. Persistent ids are recorded as
//! [`Obj::PersistentId`]. Python 2 strings (`BINSTRING`, `SHORT_BINSTRING`)
//! are strings, as Python 3 reads them; `BINBYTES` are bytes.
//!
//! [`load_prefix`] runs one pickle of several written back to back (the
//! legacy `torch.save` format) and says where it ended.
//!
//! Containers live in an arena ([`Heap`]) and values refer to them by index,
//! so mutation through the memo works as in Python and no value is
//! recursive: dropping or cloning one never recurses. Every opcode adds at
//! most one value, and the number of opcodes is capped, which bounds memory;
//! strings are bounded by the input itself.
//!
//! Supported: protocols 2-5 binary opcodes (`PROTO`, `FRAME`, `STOP`,
//! `MARK`, `POP`, `POP_MARK`, `DUP`, `NONE`, `NEWTRUE`, `NEWFALSE`,
//! `BININT`, `BININT1`, `BININT2`, `LONG1`, `LONG4`, `BINFLOAT`,
//! `BINUNICODE`, `SHORT_BINUNICODE`, `BINUNICODE8`, `BINBYTES`,
//! `SHORT_BINBYTES`, `BINBYTES8`, `BINSTRING`, `SHORT_BINSTRING`,
//! `EMPTY_TUPLE`, `TUPLE`, `TUPLE1-3`, `EMPTY_LIST`, `LIST`, `APPEND`,
//! `APPENDS`, `EMPTY_DICT`, `DICT`, `SETITEM`, `SETITEMS`, `EMPTY_SET`,
//! `ADDITEMS`, `FROZENSET`, `GLOBAL`, `STACK_GLOBAL`, `REDUCE`, `NEWOBJ`,
//! `NEWOBJ_EX`, `BUILD`, `BINPERSID`, `BINPUT`, `LONG_BINPUT`, `MEMOIZE`,
//! `BINGET`, `LONG_BINGET`). Text-protocol opcodes are refused.

use super::error::{ParseError, ParseResult};
use std::collections::HashMap;
use std::rc::Rc;

/// The most opcodes one pickle may execute. A DenseNet-201 state dict takes
/// about 40 000; the cap bounds the VM's memory to a few hundred MB.
const MAX_OPS: usize = 1 << 22;

/// A pickled value. Containers and calls are [`Obj`]s in the [`Heap`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in an `i64`.
    BigInt,
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Obj(usize),
}

/// A heap object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Items in insertion order; a repeated key is kept twice (the later
    /// one wins when read, as in Python).
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    Global {
        module: Rc<str>,
        name: Rc<str>,
    },
    /// `func(*args)` (or `cls.__new__(cls, *args)`), not evaluated, with
    /// the state a later `BUILD` gave it (the last one, if several).
    Call {
        func: Value,
        args: Value,
        state: Option<Value>,
    },
    PersistentId(Value),
}

/// The arena holding every object a pickle created.
#[derive(Debug, Default)]
pub(crate) struct Heap {
    objs: Vec<Obj>,
}

impl Heap {
    pub(crate) fn get(&self, v: &Value) -> Option<&Obj> {
        match v {
            Value::Obj(i) => self.objs.get(*i),
            _ => None,
        }
    }

    fn alloc(&mut self, obj: Obj) -> Value {
        self.objs.push(obj);
        Value::Obj(self.objs.len() - 1)
    }

    /// A short description of a value's type, for error messages.
    pub(crate) fn type_name(&self, v: &Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Obj(_) => match self.get(v) {
                Some(Obj::Tuple(_)) => "a tuple".into(),
                Some(Obj::List(_)) => "a list".into(),
                Some(Obj::Dict(_)) => "a dict".into(),
                Some(Obj::Set(_)) => "a set".into(),
                Some(Obj::Global { module, name }) => format!("the global `{module}.{name}`"),
                Some(Obj::Call { func, .. }) => match self.class_name(func) {
                    Some(class) => format!("a pickled `{class}` object"),
                    None => "a pickled object".into(),
                },
                Some(Obj::PersistentId(_)) => "a storage".into(),
                None => "an invalid reference".into(),
            },
        }
    }

    /// The `(module, name)` of a global.
    pub(crate) fn global(&self, v: &Value) -> Option<(&str, &str)> {
        match self.get(v) {
            Some(Obj::Global { module, name }) => Some((module, name)),
            _ => None,
        }
    }

    /// The dotted name of a class: a global, or the persistent id
    /// `('module', cls, source_file, source)` that the legacy `torch.save`
    /// writes for `nn.Module` classes.
    pub(crate) fn class_name(&self, v: &Value) -> Option<String> {
        let v = match self.get(v) {
            Some(Obj::PersistentId(pid)) => match self.get(pid) {
                Some(Obj::Tuple(t)) if t.first().is_some_and(|k| is_str(k, "module")) => {
                    t.get(1)?
                }
                _ => return None,
            },
            _ => v,
        };
        self.global(v).map(|(m, n)| format!("{m}.{n}"))
    }

    /// The value of string key `key` in dict `v` (the last one, as Python
    /// reads a repeated key).
    pub(crate) fn dict_get(&self, v: &Value, key: &str) -> Option<&Value> {
        match self.get(v) {
            Some(Obj::Dict(items)) => items
                .iter()
                .rev()
                .find(|(k, _)| is_str(k, key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Number of objects, a bound on the size of any walk over them.
    pub(crate) fn len(&self) -> usize {
        self.objs.len()
    }

    /// Every object with the value that refers to it, in creation order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Value, &Obj)> {
        self.objs
            .iter()
            .enumerate()
            .map(|(i, o)| (Value::Obj(i), o))
    }
}

fn is_str(v: &Value, s: &str) -> bool {
    matches!(v, Value::Str(x) if &**x == s)
}

fn corrupt(pos: usize, message: impl Into<String>) -> ParseError {
    ParseError::corrupt(format!("pickle at byte {pos}: {}", message.into()))
}

struct Vm<'a> {
    input: &'a [u8],
    pos: usize,
    /// Position of the opcode being executed, for messages.
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    heap: Heap,
}

impl<'a> Vm<'a> {
    fn err(&self, message: impl Into<String>) -> ParseError {
        corrupt(self.op_pos, message)
    }

    fn take(&mut self, n: usize) -> ParseResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.input.len())
            .ok_or_else(|| self.err("unexpected end of data"))?;
        let b = &self.input[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn take_u8(&mut self) -> ParseResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn take_array<const N: usize>(&mut self) -> ParseResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn take_len(&mut self, width: usize) -> ParseResult<usize> {
        let n = match width {
            1 => u64::from(self.take_u8()?),
            4 => u64::from(u32::from_le_bytes(self.take_array()?)),
            _ => u64::from_le_bytes(self.take_array()?),
        };
        // A length is only valid if that many bytes follow.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.input.len() - self.pos)
            .ok_or_else(|| self.err(format!("length {n} runs past the end of the data")))
    }

    fn take_line(&mut self) -> ParseResult<&'a str> {
        let rest = &self.input[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("unterminated line"))?;
        let line = std::str::from_utf8(&rest[..n]).map_err(|_| self.err("line is not UTF-8"))?;
        self.pos += n + 1;
        Ok(line)
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    /// The stack index of the current mark (0 when there is none): values
    /// below it belong to an outer frame and may not be popped.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> ParseResult<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top_mut(&mut self) -> ParseResult<&mut Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        let pos = self.op_pos;
        self.stack
            .last_mut()
            .ok_or_else(|| corrupt(pos, "stack underflow"))
    }

    fn pop_mark(&mut self) -> ParseResult<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| self.err("no mark"))?;
        if mark > self.stack.len() {
            return Err(self.err("mark above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn alloc_push(&mut self, obj: Obj) {
        let v = self.heap.alloc(obj);
        self.push(v);
    }

    fn string(&mut self, width: usize) -> ParseResult<Value> {
        let n = self.take_len(width)?;
        let b = self.take(n)?;
        Ok(Value::Str(Rc::from(String::from_utf8_lossy(b).as_ref())))
    }

    fn bytes(&mut self, width: usize) -> ParseResult<Value> {
        let n = self.take_len(width)?;
        Ok(Value::Bytes(Rc::from(self.take(n)?)))
    }

    fn long(&mut self, width: usize) -> ParseResult<Value> {
        let n = self.take_len(width)?;
        let b = self.take(n)?;
        if b.len() > 8 {
            // Fits in i64 only if the extra bytes are pure sign extension.
            let sign = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                0xff
            } else {
                0
            };
            if b[8..].iter().any(|&x| x != sign) || (b[7] & 0x80 != 0) != (sign != 0) {
                return Ok(Value::BigInt);
            }
        }
        let mut a = [0u8; 8];
        let k = b.len().min(8);
        a[..k].copy_from_slice(&b[..k]);
        if b.last().is_some_and(|&x| x & 0x80 != 0) {
            a[k..].fill(0xff);
        }
        Ok(Value::Int(i64::from_le_bytes(a)))
    }

    fn memo_get(&self, key: u32) -> ParseResult<Value> {
        self.memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {key} is not set")))
    }

    fn memo_put(&mut self, key: u32) -> ParseResult<()> {
        let v = self.top_mut()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    /// Add `items` to the list or set `target`; ignored for opaque objects
    /// (a list subclass rebuilt by a call).
    fn extend(&mut self, target: &Value, items: Vec<Value>) -> ParseResult<()> {
        let pos = self.op_pos;
        match target {
            Value::Obj(i) => match self.heap.objs.get_mut(*i) {
                Some(Obj::List(l) | Obj::Set(l)) => {
                    l.extend(items);
                    Ok(())
                }
                Some(Obj::Call { .. }) => Ok(()),
                _ => Err(corrupt(pos, "appending to something that is not a list")),
            },
            _ => Err(corrupt(pos, "appending to something that is not a list")),
        }
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>) -> ParseResult<()> {
        let pos = self.op_pos;
        if items.len() % 2 == 1 {
            return Err(corrupt(pos, "odd number of dict items"));
        }
        match target {
            Value::Obj(i) => match self.heap.objs.get_mut(*i) {
                Some(Obj::Dict(d)) => {
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                    Ok(())
                }
                Some(Obj::Call { .. }) => Ok(()),
                _ => Err(corrupt(
                    pos,
                    "setting items on something that is not a dict",
                )),
            },
            _ => Err(corrupt(
                pos,
                "setting items on something that is not a dict",
            )),
        }
    }

    fn call(&mut self, func: Value, args: Value) {
        let empty_args = matches!(self.heap.get(&args), Some(Obj::Tuple(a)) if a.is_empty());
        if empty_args && self.heap.global(&func) == Some(("collections", "OrderedDict")) {
            self.alloc_push(Obj::Dict(Vec::new()));
        } else {
            self.alloc_push(Obj::Call {
                func,
                args,
                state: None,
            });
        }
    }

    fn run(mut self) -> ParseResult<(Heap, Value, usize)> {
        for _ in 0..MAX_OPS {
            self.op_pos = self.pos;
            let op = self.take_u8()?;
            match op {
                0x80 => {
                    let proto = self.take_u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok((self.heap, v, self.pos));
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top_mut()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.take_u8()?;
                    self.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(i64::from(v)));
                }
                0x8a => {
                    let v = self.long(1)?;
                    self.push(v);
                }
                0x8b => {
                    let v = self.long(4)?;
                    self.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Value::Float(v));
                }
                b'X' => {
                    let v = self.string(4)?;
                    self.push(v);
                }
                0x8c => {
                    let v = self.string(1)?;
                    self.push(v);
                }
                0x8d => {
                    let v = self.string(8)?;
                    self.push(v);
                }
                b'B' => {
                    let v = self.bytes(4)?;
                    self.push(v);
                }
                b'C' => {
                    let v = self.bytes(1)?;
                    self.push(v);
                }
                // Python 2 `str`: a string to Python 3 (keys of old state dicts).
                b'T' => {
                    let v = self.string(4)?;
                    self.push(v);
                }
                b'U' => {
                    let v = self.string(1)?;
                    self.push(v);
                }
                0x8e => {
                    let v = self.bytes(8)?;
                    self.push(v);
                }
                b')' => self.alloc_push(Obj::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.alloc_push(Obj::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.alloc_push(Obj::Tuple(items));
                }
                b']' => self.alloc_push(Obj::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.alloc_push(Obj::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    let target = self.top_mut()?.clone();
                    self.extend(&target, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top_mut()?.clone();
                    self.extend(&target, items)?;
                }
                b'}' => self.alloc_push(Obj::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.heap.alloc(Obj::Dict(Vec::new()));
                    self.set_items(&v, items)?;
                    self.push(v);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top_mut()?.clone();
                    self.set_items(&target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top_mut()?.clone();
                    self.set_items(&target, items)?;
                }
                0x8f => self.alloc_push(Obj::Set(Vec::new())),
                0x91 => {
                    let items = self.pop_mark()?;
                    self.alloc_push(Obj::Set(items));
                }
                b'c' => {
                    let module = Rc::from(self.take_line()?);
                    let name = Rc::from(self.take_line()?);
                    self.alloc_push(Obj::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    self.alloc_push(Obj::Global { module, name });
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.call(cls, args);
                }
                b'b' => {
                    // The state of an object: a module's `__dict__` is kept
                    // on its call; others (e.g. a state dict's `_metadata`)
                    // are dropped.
                    let state = self.pop()?;
                    let target = self.top_mut()?.clone();
                    if let Value::Obj(i) = target {
                        if let Some(Obj::Call { state: s, .. }) = self.heap.objs.get_mut(i) {
                            *s = Some(state);
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.alloc_push(Obj::PersistentId(pid));
                }
                b'q' => {
                    let k = self.take_u8()?;
                    self.memo_put(u32::from(k))?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.take_array()?);
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = u32::try_from(self.memo.len())
                        .map_err(|_| self.err("memo is too large"))?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.take_u8()?;
                    let v = self.memo_get(u32::from(k))?;
                    self.push(v);
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.take_array()?);
                    let v = self.memo_get(k)?;
                    self.push(v);
                }
                _ => {
                    return Err(ParseError::unsupported(format!(
                        "pickle opcode 0x{op:02x} at byte {} is not supported \
                         (densenetc reads the binary pickles torch.save writes)",
                        self.op_pos
                    )))
                }
            }
        }
        Err(ParseError::unsupported(format!(
            "the pickle runs more than {MAX_OPS} opcodes; a state dict needs far fewer"
        )))
    }
}

/// Run a pickle to its `STOP` and return the heap and the result.
pub(crate) fn load(input: &[u8]) -> ParseResult<(Heap, Value)> {
    load_prefix(input).map(|(heap, v, _)| (heap, v))
}

/// Run the pickle that starts `input` to its `STOP`; also return the number
/// of bytes it took (where the next pickle or data starts).
pub(crate) fn load_prefix(input: &[u8]) -> ParseResult<(Heap, Value, usize)> {
    Vm {
        input,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        heap: Heap::default(),
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(bytes: &[u8]) -> Value {
        let mut p = vec![0x80, 2, 0x8a, bytes.len() as u8];
        p.extend_from_slice(bytes);
        p.push(b'.');
        load(&p).expect("valid pickle").1
    }

    #[test]
    fn long1_sign_extension() {
        assert_eq!(int(&[]), Value::Int(0));
        assert_eq!(int(&[0xff]), Value::Int(-1));
        assert_eq!(int(&[0x00, 0x01]), Value::Int(256));
        assert_eq!(int(&[0x80, 0x00]), Value::Int(128));
        assert_eq!(int(&[0xff; 10]), Value::Int(-1));
        assert_eq!(int(&[1, 0, 0, 0, 0, 0, 0, 0, 0]), Value::Int(1));
        assert_eq!(
            int(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]),
            Value::BigInt,
            "2^63 does not fit"
        );
        assert_eq!(int(&[0, 0, 0, 0, 0, 0, 0, 0, 1]), Value::BigInt);
    }

    #[test]
    fn memo_shares_mutable_dicts() {
        // {} memoised, then filled, then fetched from the memo.
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s0h\x00.";
        let (heap, v) = load(p).expect("valid pickle");
        assert_eq!(
            heap.get(&v),
            Some(&Obj::Dict(vec![(Value::Str("a".into()), Value::Int(1))]))
        );
    }

    #[test]
    fn marks_fence_the_stack() {
        // MARK then POP must not pop below the mark.
        assert!(load(b"\x80\x02N(0.").is_err());
        assert!(load(b"\x80\x02(t.").is_ok());
    }
}
