//! A restricted reader for the pickles inside PyTorch archives (`data.pkl` of TorchScript and
//! `torch.save` zip files).
//!
//! A pickle is a program for a stack machine, and `GLOBAL` + `REDUCE` can call any Python
//! function. This reader never calls anything: it knows the handful of opcodes that serialise
//! nested module objects, dicts, tuples and tensors (protocol 2, plus the protocol-4 framing
//! and memo opcodes), and it accepts exactly these globals:
//!
//! - `torch._utils._rebuild_tensor_v2` (and `_rebuild_parameter` around it): a tensor view
//!   (storage, offset, shape, strides) is recorded, nothing else;
//! - `torch.{Float,Half,BFloat16,Double}Storage`: the dtype of a persistent storage id;
//! - `collections.OrderedDict`: an empty dict;
//! - `torch.jit._pickle.build_{int,double,bool}list`: TorchScript's typed lists, kept as lists;
//! - classes under `__torch__.`: TorchScript modules, kept as a class name plus their attribute
//!   dict (set by `BUILD`); no class code runs.
//!
//! Anything else (another opcode, another global, a call with unexpected arguments) is an
//! error naming the opcode or global and its byte offset.
//!
//! The input is untrusted, so every size is bounded: lengths are checked against the bytes left
//! before anything is allocated, memo indices cannot run ahead of the file, the finished value
//! may nest at most [`MAX_DEPTH`] containers and may not contain itself, and dropping a value
//! (of any depth) never recurses.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;

/// Element type of a PyTorch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    /// `torch.float32`.
    F32,
    /// `torch.float16`.
    F16,
    /// `torch.bfloat16`.
    BF16,
    /// `torch.float64`.
    F64,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 => 2,
            StorageDtype::F64 => 8,
        }
    }
}

/// A storage named by a persistent id: its bytes live in the archive at `data/<key>`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// File name under `data/` in the archive.
    pub key: String,
    /// Element type.
    pub dtype: StorageDtype,
    /// Number of elements the pickle declares.
    pub numel: usize,
}

/// A strided view into a storage, as `_rebuild_tensor_v2` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The storage holding the values.
    pub storage: StorageRef,
    /// Offset of the first element, in elements.
    pub offset: usize,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub strides: Vec<usize>,
}

/// The elements of a tuple or list. Dropping them never recurses, however deeply they nest.
#[derive(Clone, Default)]
pub struct Items(pub Vec<Value>);

/// The entries of a dict, in insertion order. Dropping them never recurses.
#[derive(Clone, Default)]
pub struct Entries(pub Vec<(Value, Value)>);

/// A value the restricted machine can build.
#[derive(Clone)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A tuple (shared: a memoised tuple fetched twice is not copied).
    Tuple(Rc<Items>),
    /// A list (shared, as pickle lists are mutable and may be memoised before being filled).
    List(Rc<RefCell<Items>>),
    /// A dict in insertion order.
    Dict(Rc<RefCell<Entries>>),
    /// A TorchScript module object: its class and the attribute dict `BUILD` gave it.
    Object(Rc<RefCell<Object>>),
    /// A tensor view.
    Tensor(TensorRef),
    /// A storage (only as the first argument of `_rebuild_tensor_v2`).
    Storage(StorageRef),
    /// One of the accepted globals.
    Global(Global),
}

/// A module object from a TorchScript archive.
#[derive(Debug, Clone)]
pub struct Object {
    /// Qualified class name, e.g. `__torch__.inceptionv3.Conv2dLayer`.
    pub class: String,
    /// Attributes in pickle order (parameters, submodules, constants).
    pub attributes: Vec<(String, Value)>,
}

/// The globals this reader accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Global {
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch.jit._pickle.build_intlist` and its float / bool siblings.
    BuildList,
    /// A storage class.
    StorageType(StorageDtype),
    /// A TorchScript class (`__torch__.*`).
    TorchScriptClass(String),
}

impl Deref for Items {
    type Target = Vec<Value>;
    fn deref(&self) -> &Vec<Value> {
        &self.0
    }
}

impl DerefMut for Items {
    fn deref_mut(&mut self) -> &mut Vec<Value> {
        &mut self.0
    }
}

impl Deref for Entries {
    type Target = Vec<(Value, Value)>;
    fn deref(&self) -> &Vec<(Value, Value)> {
        &self.0
    }
}

impl DerefMut for Entries {
    fn deref_mut(&mut self) -> &mut Vec<(Value, Value)> {
        &mut self.0
    }
}

impl Drop for Items {
    fn drop(&mut self) {
        dismantle(std::mem::take(&mut self.0));
    }
}

impl Drop for Entries {
    fn drop(&mut self) {
        dismantle(flatten_entries(std::mem::take(&mut self.0)));
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        let values = std::mem::take(&mut self.attributes)
            .into_iter()
            .map(|(_, v)| v);
        dismantle(values.collect());
    }
}

fn flatten_entries(entries: Vec<(Value, Value)>) -> Vec<Value> {
    entries.into_iter().flat_map(|(k, v)| [k, v]).collect()
}

/// Drops `pending` without recursion: a container this drop would free is emptied into the
/// work list first, so the nested drops it triggers find nothing left to drop.
fn dismantle(mut pending: Vec<Value>) {
    while let Some(value) = pending.pop() {
        match value {
            Value::Tuple(mut rc) => {
                if let Some(items) = Rc::get_mut(&mut rc) {
                    pending.append(&mut items.0);
                }
            }
            Value::List(rc) if Rc::strong_count(&rc) == 1 => {
                pending.append(&mut rc.borrow_mut().0);
            }
            Value::Dict(rc) if Rc::strong_count(&rc) == 1 => {
                let entries = std::mem::take(&mut rc.borrow_mut().0);
                pending.extend(flatten_entries(entries));
            }
            Value::Object(rc) if Rc::strong_count(&rc) == 1 => {
                let attributes = std::mem::take(&mut rc.borrow_mut().attributes);
                pending.extend(attributes.into_iter().map(|(_, v)| v));
            }
            _ => {}
        }
    }
}

/// How deep and how many items of a value error messages show.
const DEBUG_DEPTH: usize = 3;
const DEBUG_ITEMS: usize = 8;

/// Writes `items` as `open a, b, ... close`, at most [`DEBUG_ITEMS`] of them.
fn fmt_seq<'v>(
    f: &mut fmt::Formatter<'_>,
    (open, close): (&str, &str),
    items: impl ExactSizeIterator<Item = (Option<&'v Value>, &'v Value)>,
    depth: usize,
) -> fmt::Result {
    let len = items.len();
    write!(f, "{open}")?;
    if depth >= DEBUG_DEPTH && len > 0 {
        write!(f, "...{len} items")?;
        return write!(f, "{close}");
    }
    for (i, (key, value)) in items.take(DEBUG_ITEMS).enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        if let Some(key) = key {
            key.fmt_depth(f, depth + 1)?;
            write!(f, ": ")?;
        }
        value.fmt_depth(f, depth + 1)?;
    }
    if len > DEBUG_ITEMS {
        write!(f, ", ...{} more", len - DEBUG_ITEMS)?;
    }
    write!(f, "{close}")
}

impl Value {
    /// Debug output cut at [`DEBUG_DEPTH`] levels and [`DEBUG_ITEMS`] items, so that error
    /// messages stay short and a list that contains itself prints.
    fn fmt_depth(&self, f: &mut fmt::Formatter<'_>, depth: usize) -> fmt::Result {
        match self {
            Value::None => write!(f, "None"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) if s.len() > 80 => write!(f, "{:?}...", truncate(s, 80)),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Tuple(items) => fmt_seq(f, ("(", ")"), items.iter().map(|v| (None, v)), depth),
            Value::List(items) => match items.try_borrow() {
                Ok(items) => fmt_seq(f, ("[", "]"), items.iter().map(|v| (None, v)), depth),
                Err(_) => write!(f, "[<in use>]"),
            },
            Value::Dict(items) => match items.try_borrow() {
                Ok(items) => fmt_seq(
                    f,
                    ("{", "}"),
                    items.iter().map(|(k, v)| (Some(k), v)),
                    depth,
                ),
                Err(_) => write!(f, "{{<in use>}}"),
            },
            Value::Object(o) => match o.try_borrow() {
                Ok(o) => write!(f, "<{}>", truncate(&o.class, 80)),
                Err(_) => write!(f, "<object>"),
            },
            Value::Tensor(t) => write!(f, "tensor{:?}", t.shape),
            Value::Storage(s) => write!(f, "storage({})", truncate(&s.key, 80)),
            Value::Global(g) => write!(f, "{g:?}"),
        }
    }
}

/// The first `max` bytes of `s` (rounded down to a character boundary).
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_depth(f, 0)
    }
}

/// Why a pickle was rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct PickleError {
    /// Byte offset of the offending opcode.
    pub offset: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pickle byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for PickleError {}

/// Items on the machine's stack: values, or the marks that `MARK` pushes.
enum Item {
    Mark,
    Value(Value),
}

/// Bounds that keep a hostile file from making the reader allocate without limit.
const MAX_MEMO: usize = 1 << 20;
const MAX_DIMS: usize = 16;
/// How many containers the finished value may nest (TorchScript modules nest about ten).
pub const MAX_DEPTH: usize = 200;
/// How many attribute entries all `BUILD`s together may copy (a few thousand in real files;
/// the bound stops a file that rebuilds one huge dict over and over).
const MAX_BUILD_ENTRIES: usize = 1 << 22;

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    op_at: usize,
    stack: Vec<Item>,
    memo: Vec<Option<Value>>,
    build_entries: usize,
}

impl<'a> Machine<'a> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError {
            offset: self.op_at,
            message: message.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => self.err("truncated pickle"),
        }
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.bytes[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("unterminated GLOBAL name");
        };
        self.pos += end + 1;
        match std::str::from_utf8(&rest[..end]) {
            Ok(s) => Ok(s),
            Err(_) => self.err("GLOBAL name is not UTF-8"),
        }
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Item::Value(v));
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        match self.stack.pop() {
            Some(Item::Value(v)) => Ok(v),
            Some(Item::Mark) => self.err("unexpected MARK on the stack"),
            None => self.err("stack underflow"),
        }
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        match self.stack.last_mut() {
            Some(Item::Value(v)) => Ok(v),
            _ => Err(PickleError {
                offset: self.op_at,
                message: "expected a value on the stack".into(),
            }),
        }
    }

    /// Pops everything down to the last mark, returning it in push order.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(mark) = self.stack.iter().rposition(|i| matches!(i, Item::Mark)) else {
            return self.err("no MARK on the stack");
        };
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items
            .into_iter()
            .map(|i| match i {
                Item::Value(v) => v,
                Item::Mark => unreachable!("marks above the last mark"),
            })
            .collect())
    }

    fn memo_put(&mut self, index: usize) -> Result<(), PickleError> {
        // A real pickle numbers its memo entries from 0, one per opcode at most.
        if index >= MAX_MEMO || index > self.bytes.len() {
            return self.err(format!(
                "memo index {index} is larger than the pickle ({} bytes) can use",
                self.bytes.len()
            ));
        }
        let v = self.top()?.clone();
        if self.memo.len() <= index {
            self.memo.resize(index + 1, None);
        }
        self.memo[index] = Some(v);
        Ok(())
    }

    fn memo_get(&mut self, index: usize) -> Result<(), PickleError> {
        match self.memo.get(index).cloned().flatten() {
            Some(v) => {
                self.push(v);
                Ok(())
            }
            None => self.err(format!("memo index {index} was never set")),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<Global, PickleError> {
        Ok(match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch.jit._pickle", "build_intlist" | "build_doublelist" | "build_boollist") => {
                Global::BuildList
            }
            ("torch", "FloatStorage") => Global::StorageType(StorageDtype::F32),
            ("torch", "HalfStorage") => Global::StorageType(StorageDtype::F16),
            ("torch", "BFloat16Storage") => Global::StorageType(StorageDtype::BF16),
            ("torch", "DoubleStorage") => Global::StorageType(StorageDtype::F64),
            (m, n) if m == "__torch__" || m.starts_with("__torch__.") => {
                Global::TorchScriptClass(format!("{m}.{n}"))
            }
            (m, n) => {
                return self.err(format!(
                    "global {m}.{n} is not allowed (only tensors, storages, OrderedDict and \
                     TorchScript module classes are read)"
                ));
            }
        })
    }

    fn persistent_load(&self, pid: Value) -> Result<Value, PickleError> {
        let Value::Tuple(parts) = &pid else {
            return self.err(format!("persistent id {pid:?} is not a tuple"));
        };
        match parts.as_slice() {
            [
                Value::Str(kind),
                Value::Global(Global::StorageType(dtype)),
                Value::Str(key),
                Value::Str(_location),
                Value::Int(numel),
            ] if kind == "storage" && *numel >= 0 => Ok(Value::Storage(StorageRef {
                key: key.clone(),
                dtype: *dtype,
                numel: *numel as usize,
            })),
            _ => self.err(format!(
                "persistent id {pid:?} is not ('storage', <Float|Half|BFloat16|Double>Storage, key, location, numel)"
            )),
        }
    }

    fn dims(&self, v: &Value, what: &str) -> Result<Vec<usize>, PickleError> {
        match v {
            Value::Tuple(items) if items.len() <= MAX_DIMS => items
                .0
                .iter()
                .map(|i| match i {
                    Value::Int(n) if *n >= 0 => Ok(*n as usize),
                    _ => self.err(format!("{what} holds {i:?}, not a non-negative integer")),
                })
                .collect(),
            _ => self.err(format!(
                "{what} is {v:?}, not a tuple of at most {MAX_DIMS} ints"
            )),
        }
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Tuple(args) = args else {
            return self.err("REDUCE arguments are not a tuple");
        };
        match callable {
            Value::Global(Global::RebuildTensor) => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if !(6..=7).contains(&args.len()) {
                    return self.err(format!(
                        "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                        args.len()
                    ));
                }
                let Value::Storage(storage) = args[0].clone() else {
                    return self.err("_rebuild_tensor_v2: first argument is not a storage");
                };
                let Value::Int(offset) = args[1] else {
                    return self.err("_rebuild_tensor_v2: offset is not an integer");
                };
                let shape = self.dims(&args[2], "tensor size")?;
                let strides = self.dims(&args[3], "tensor stride")?;
                if shape.len() != strides.len() || offset < 0 {
                    return self.err("_rebuild_tensor_v2: size, stride and offset disagree");
                }
                Ok(Value::Tensor(TensorRef {
                    storage,
                    offset: offset as usize,
                    shape,
                    strides,
                }))
            }
            Value::Global(Global::RebuildParameter) => match args.as_slice() {
                [Value::Tensor(t), Value::Bool(_), _] => Ok(Value::Tensor(t.clone())),
                _ => self.err("_rebuild_parameter: expected (tensor, requires_grad, hooks)"),
            },
            Value::Global(Global::BuildList) => match args.as_slice() {
                [Value::List(items)] => Ok(Value::List(items.clone())),
                _ => self.err("build_*list: expected one list argument"),
            },
            Value::Global(Global::OrderedDict) if args.is_empty() => Ok(empty_dict()),
            other => self.err(format!("REDUCE of {other:?} is not allowed")),
        }
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            self.op_at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let v = self.u8()?;
                    if v > 5 {
                        return self.err(format!("pickle protocol {v} is not supported"));
                    }
                }
                0x95 => {
                    // FRAME: the frame length only groups opcodes.
                    self.take(8)?;
                }
                b'.' => {
                    // STOP
                    let value = self.pop()?;
                    return match nesting_depth(&value) {
                        Ok(_) => Ok(value),
                        Err(message) => self.err(message),
                    };
                }
                b'(' => self.stack.push(Item::Mark),
                b')' => self.push(tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(tuple(items));
                }
                b']' => self.push(Value::List(Rc::default())),
                b'a' => {
                    let v = self.pop()?;
                    let Value::List(list) = self.top()? else {
                        return self.err("APPEND to a non-list");
                    };
                    list.borrow_mut().push(v);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let Value::List(list) = self.top()? else {
                        return self.err("APPENDS to a non-list");
                    };
                    list.borrow_mut().extend(items);
                }
                b'}' => self.push(empty_dict()),
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let Value::Dict(dict) = self.top()? else {
                        return self.err("SETITEM on a non-dict");
                    };
                    dict.borrow_mut().push((k, v));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.err("SETITEMS with an odd number of items");
                    }
                    let Value::Dict(dict) = self.top()? else {
                        return self.err("SETITEMS on a non-dict");
                    };
                    let mut dict = dict.borrow_mut();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dict.push((k, v));
                    }
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64));
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return self.err("LONG1 wider than 64 bits");
                    }
                    let b = self.take(n)?;
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xff; 8]
                    } else {
                        [0; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.push(Value::Float(f64::from_be_bytes(b.try_into().expect("8"))));
                }
                b'X' | 0x8c => {
                    // BINUNICODE / SHORT_BINUNICODE
                    let n = if op == b'X' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let b = self.take(n)?;
                    match std::str::from_utf8(b) {
                        Ok(s) => self.push(Value::Str(s.to_owned())),
                        Err(_) => return self.err("string is not UTF-8"),
                    }
                }
                b'q' => {
                    let i = self.u8()? as usize;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()? as usize;
                    self.memo_put(i)?;
                }
                0x94 => {
                    // MEMOIZE
                    let i = self.memo.len();
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as usize;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()? as usize;
                    self.memo_get(i)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(Value::Global(g));
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args), only for TorchScript classes without args.
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    match (cls, args) {
                        (Value::Global(Global::TorchScriptClass(class)), Value::Tuple(a))
                            if a.is_empty() =>
                        {
                            self.push(Value::Object(Rc::new(RefCell::new(Object {
                                class,
                                attributes: Vec::new(),
                            }))));
                        }
                        (cls, _) => return self.err(format!("NEWOBJ of {cls:?} is not allowed")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD: set a module object's attributes from a dict.
                    let state = self.pop()?;
                    let Value::Dict(state) = state else {
                        return self.err(format!("BUILD with state {state:?}, not a dict"));
                    };
                    let Value::Object(obj) = self.top()?.clone() else {
                        return self.err("BUILD on something other than a TorchScript object");
                    };
                    self.build_entries += state.borrow().len();
                    if self.build_entries > MAX_BUILD_ENTRIES {
                        return self.err(format!(
                            "BUILD copies more than {MAX_BUILD_ENTRIES} attributes in all"
                        ));
                    }
                    let mut attributes = Vec::new();
                    for (k, v) in state.borrow().iter() {
                        let Value::Str(k) = k else {
                            return self.err(format!("attribute name {k:?} is not a string"));
                        };
                        attributes.push((k.clone(), v.clone()));
                    }
                    obj.borrow_mut().attributes = attributes;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v);
                }
                other => {
                    return self.err(format!(
                        "opcode 0x{other:02x} is not supported by this restricted reader"
                    ));
                }
            }
        }
    }
}

fn tuple(items: Vec<Value>) -> Value {
    Value::Tuple(Rc::new(Items(items)))
}

fn empty_dict() -> Value {
    Value::Dict(Rc::default())
}

/// A container's identity (its allocation), for the depth check; `None` for other values.
fn container_id(value: &Value) -> Option<usize> {
    Some(match value {
        Value::Tuple(rc) => Rc::as_ptr(rc) as *const () as usize,
        Value::List(rc) => Rc::as_ptr(rc) as *const () as usize,
        Value::Dict(rc) => Rc::as_ptr(rc) as *const () as usize,
        Value::Object(rc) => Rc::as_ptr(rc) as *const () as usize,
        _ => return None,
    })
}

/// The values a container holds (cheap: containers are shared, not copied).
fn children(value: &Value) -> Vec<Value> {
    match value {
        Value::Tuple(items) => items.0.clone(),
        Value::List(items) => items.borrow().0.clone(),
        Value::Dict(entries) => flatten_entries(entries.borrow().0.clone()),
        Value::Object(o) => o
            .borrow()
            .attributes
            .iter()
            .map(|(_, v)| v.clone())
            .collect(),
        _ => Vec::new(),
    }
}

/// How many containers `root` nests, without recursion; an error when that is more than
/// [`MAX_DEPTH`] or when a container holds itself (memo references can make both). Shared
/// containers are measured once, so the walk is linear in the value's size.
fn nesting_depth(root: &Value) -> Result<usize, String> {
    enum Seen {
        Open,
        Done(usize),
    }
    /// A container being measured: its id, its children, the next child, the deepest so far.
    struct Frame {
        id: usize,
        children: Vec<Value>,
        next: usize,
        deepest: usize,
    }
    let Some(id) = container_id(root) else {
        return Ok(0);
    };
    let too_deep = || format!("containers nest deeper than {MAX_DEPTH} levels");
    let mut seen = HashMap::from([(id, Seen::Open)]);
    let mut path = vec![Frame {
        id,
        children: children(root),
        next: 0,
        deepest: 0,
    }];
    while let Some(top) = path.last_mut() {
        if let Some(child) = top.children.get(top.next).cloned() {
            top.next += 1;
            let Some(id) = container_id(&child) else {
                continue;
            };
            match seen.get(&id) {
                Some(Seen::Open) => return Err("a container holds itself".into()),
                Some(Seen::Done(depth)) => top.deepest = top.deepest.max(*depth),
                None if path.len() >= MAX_DEPTH => return Err(too_deep()),
                None => {
                    seen.insert(id, Seen::Open);
                    path.push(Frame {
                        id,
                        children: children(&child),
                        next: 0,
                        deepest: 0,
                    });
                }
            }
            continue;
        }
        let done = path.pop().expect("a frame");
        let depth = done.deepest + 1;
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        seen.insert(done.id, Seen::Done(depth));
        if let Some(parent) = path.last_mut() {
            parent.deepest = parent.deepest.max(depth);
        }
    }
    match seen.get(&id) {
        Some(Seen::Done(depth)) => Ok(*depth),
        _ => unreachable!("the root is measured last"),
    }
}

/// Runs the restricted machine over `bytes` and returns the pickled value.
pub fn parse(bytes: &[u8]) -> Result<Value, PickleError> {
    Machine {
        bytes,
        pos: 0,
        op_at: 0,
        stack: Vec::new(),
        memo: Vec::new(),
        build_entries: 0,
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_torchscript_shaped_object() {
        // GLOBAL '__torch__.m M', EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, MARK 'k' 3 'f' False SETITEMS,
        // BUILD, STOP
        let mut p = vec![0x80, 2];
        p.extend_from_slice(b"c__torch__.m\nM\n)\x81}(");
        p.extend_from_slice(b"X\x01\x00\x00\x00kK\x03X\x01\x00\x00\x00f\x89ub.");
        let Value::Object(o) = parse(&p).unwrap() else {
            panic!("not an object")
        };
        let o = o.borrow();
        assert_eq!(o.class, "__torch__.m.M");
        assert_eq!(o.attributes.len(), 2);
        assert!(matches!(o.attributes[0].1, Value::Int(3)));
    }

    #[test]
    fn refuses_arbitrary_globals_and_opcodes() {
        let err = parse(b"\x80\x02cos\nsystem\n.").unwrap_err();
        assert!(err.message.contains("os.system is not allowed"), "{err}");
        assert_eq!(err.offset, 2);
        let err = parse(b"\x80\x02S'x'\n.").unwrap_err();
        assert!(err.message.contains("opcode 0x53"), "{err}");
        let err = parse(b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R.").unwrap_err();
        assert!(err.message.contains("REDUCE"), "{err}");
        assert!(parse(b"\x80\x02X\xff\x00\x00\x00ab").is_err());
        assert!(parse(b"\x80\x02h\x05.").is_err());
    }

    #[test]
    fn memo_shares_mutable_containers() {
        // EMPTY_LIST, BINPUT 0, K 1, APPEND, POP-less: BINGET 0 gives the filled list.
        let p = b"\x80\x02]q\x00K\x01aK\x02ah\x00\x86.";
        let Value::Tuple(t) = parse(p).unwrap() else {
            panic!()
        };
        let (Value::List(a), Value::List(b)) = (&t[0], &t[1]) else {
            panic!()
        };
        assert_eq!(a.borrow().len(), 2);
        assert!(Rc::ptr_eq(a, b));
    }
}
