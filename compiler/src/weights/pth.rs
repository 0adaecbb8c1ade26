//! PyTorch checkpoints: the objects `torch.save` pickles and the storages
//! their tensors live in, whichever container holds them.
//!
//! Two containers exist (see [`super::legacy`] for the pre-1.6 one). The
//! zip archive `torch.save` writes since PyTorch 1.6 has entries sharing one
//! top-level folder `<archive>/`:
//! - `data.pkl`: the pickled object (see [`super::pickle`]); tensors are
//!   `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
//!   calls whose storage is a persistent id
//!   `('storage', torch.FloatStorage, key, location, numel)`;
//! - `data/<key>`: the raw bytes of each storage;
//! - `byteorder`: `little` or `big` (absent in old files: little).
//!
//! Both containers give a [`Pickled`]: the object's heap, its root, and the
//! storages by key. Where the network is inside the object is
//! [`super::find`]'s business; this module interprets tensor values
//! ([`tensor_view`]) and copies them out of their storage ([`Pickled::materialise`]).
//! Tensors may be any strided view of their storage (offset, non-contiguous
//! strides); they are copied out in row-major order. Only float32 values are
//! decoded; other dtypes are checked for bounds and kept as
//! [`TensorData::Other`].

use super::error::{ParseError, ParseResult};
use super::pickle::{self, Heap, Obj, Value};
use super::zip::Archive;
use super::{Tensor, TensorData};
use std::collections::HashMap;

/// A pickled checkpoint: the object and where its storages' bytes are.
pub(crate) struct Pickled<'a> {
    pub heap: Heap,
    pub root: Value,
    storages: StorageData<'a>,
    big_endian: bool,
}

enum StorageData<'a> {
    /// `data/<key>` entries of a zip archive, read (and CRC-checked) once.
    Zip {
        zip: Archive<'a>,
        prefix: String,
        cache: HashMap<String, &'a [u8]>,
    },
    /// The storages of a legacy file, already located and size-checked.
    Legacy(HashMap<String, &'a [u8]>),
}

impl<'a> Pickled<'a> {
    pub(crate) fn legacy(heap: Heap, root: Value, storages: HashMap<String, &'a [u8]>) -> Self {
        Pickled {
            heap,
            root,
            storages: StorageData::Legacy(storages),
            big_endian: false,
        }
    }

    fn bytes(&mut self, key: &str) -> ParseResult<&'a [u8]> {
        match &mut self.storages {
            StorageData::Zip { zip, prefix, cache } => {
                if let Some(b) = cache.get(key) {
                    return Ok(b);
                }
                let b = zip.read(&format!("{prefix}data/{key}"))?.ok_or_else(|| {
                    ParseError::corrupt(format!("storage `data/{key}` is missing"))
                })?;
                cache.insert(key.to_owned(), b);
                Ok(b)
            }
            StorageData::Legacy(map) => map.get(key).copied().ok_or_else(|| {
                ParseError::corrupt(format!(
                    "storage `{key}` is not among the file's stored storages"
                ))
            }),
        }
    }

    /// The tensor that pickled value `v` describes, copied out of its storage.
    pub(crate) fn materialise(&mut self, v: &Value) -> ParseResult<Tensor> {
        let view = tensor_view(&self.heap, v)?;
        let bytes = self.bytes(&view.storage.key)?;
        materialise(&view, bytes, self.big_endian)
    }
}

/// Parse a torch.save zip checkpoint held in memory.
pub(crate) fn parse_zip(bytes: &[u8]) -> ParseResult<Pickled<'_>> {
    let zip = Archive::parse(bytes)?;
    let prefix = archive_prefix(&zip)?;
    let pkl = zip
        .read(&format!("{prefix}data.pkl"))?
        .ok_or_else(|| ParseError::corrupt("the archive has no data.pkl"))?;
    let big_endian = match zip.read(&format!("{prefix}byteorder"))? {
        None | Some(b"little") => false,
        Some(b"big") => true,
        Some(other) => {
            return Err(ParseError::corrupt(format!(
                "unknown byte order `{}`",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let (heap, root) = pickle::load(pkl)?;
    Ok(Pickled {
        heap,
        root,
        storages: StorageData::Zip {
            zip,
            prefix,
            cache: HashMap::new(),
        },
        big_endian,
    })
}

/// The `<archive>/` folder holding `data.pkl`, with its trailing slash.
fn archive_prefix(zip: &Archive<'_>) -> ParseResult<String> {
    let mut found = zip
        .entries()
        .iter()
        .filter_map(|e| e.name.strip_suffix("data.pkl"))
        .filter(|p| p.ends_with('/') && p.matches('/').count() == 1);
    let prefix = found.next().ok_or_else(|| {
        ParseError::unsupported(
            "this zip archive is not a torch.save checkpoint (it has no `<archive>/data.pkl`)",
        )
    })?;
    if found.next().is_some() {
        return Err(ParseError::corrupt("the archive has several data.pkl"));
    }
    let is_torchscript = zip.entries().iter().any(|e| {
        e.name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest == "constants.pkl" || rest.starts_with("code/"))
    });
    if is_torchscript {
        return Err(ParseError::unsupported(
            "this is a TorchScript archive (torch.jit.save); save the model's \
             state_dict() with torch.save instead",
        ));
    }
    Ok(prefix.to_owned())
}

pub(crate) fn str_key(v: &Value) -> Option<&str> {
    match v {
        Value::Str(s) => Some(s),
        _ => None,
    }
}

/// Whether pickled value `v` is a tensor or parameter (of any kind, even one
/// [`tensor_view`] then refuses): a call of one of torch's rebuild functions.
pub(crate) fn is_tensor(heap: &Heap, v: &Value) -> bool {
    let Some(Obj::Call { func, .. }) = heap.get(v) else {
        return false;
    };
    match heap.global(func) {
        Some(("torch._utils", name)) => name.starts_with("_rebuild_"),
        Some(("torch.nn.parameter", "Parameter")) => true,
        _ => false,
    }
}

/// An element type of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StorageType {
    pub dtype: &'static str,
    pub size: usize,
}

fn storage_type(name: &str) -> Option<StorageType> {
    let (dtype, size) = match name {
        "FloatStorage" => ("float32", 4),
        "DoubleStorage" => ("float64", 8),
        "HalfStorage" => ("float16", 2),
        "BFloat16Storage" => ("bfloat16", 2),
        "LongStorage" => ("int64", 8),
        "IntStorage" => ("int32", 4),
        "ShortStorage" => ("int16", 2),
        "CharStorage" => ("int8", 1),
        "ByteStorage" => ("uint8", 1),
        "BoolStorage" => ("bool", 1),
        "ComplexFloatStorage" => ("complex64", 8),
        "ComplexDoubleStorage" => ("complex128", 16),
        _ => return None,
    };
    Some(StorageType { dtype, size })
}

/// A storage as a persistent id declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageId {
    pub key: String,
    pub ty: StorageType,
    /// Elements of the (root) storage, as declared.
    pub numel: usize,
    /// A legacy storage view `(offset, size)` into the root storage, in
    /// elements (PyTorch < 0.4 wrote these; later versions write `None`).
    pub view: Option<(usize, usize)>,
}

/// A tensor as the pickle describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    pub storage: StorageId,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

fn index(v: &Value, what: &str) -> ParseResult<usize> {
    match v {
        Value::Int(i) => usize::try_from(*i)
            .map_err(|_| ParseError::corrupt(format!("{what} is negative ({i})"))),
        _ => Err(ParseError::corrupt(format!("{what} is not an integer"))),
    }
}

fn index_tuple(heap: &Heap, v: &Value, what: &str) -> ParseResult<Vec<usize>> {
    match heap.get(v) {
        Some(Obj::Tuple(items)) => items.iter().map(|i| index(i, what)).collect(),
        _ => Err(ParseError::corrupt(format!("{what} is not a tuple"))),
    }
}

fn tuple<'h>(heap: &'h Heap, v: &Value, what: &str) -> ParseResult<&'h [Value]> {
    match heap.get(v) {
        Some(Obj::Tuple(items)) => Ok(items),
        _ => Err(ParseError::corrupt(format!("{what} is not a tuple"))),
    }
}

/// Interpret a pickled value as a tensor: a `_rebuild_tensor_v2` call (or
/// PyTorch 0.3's `_rebuild_tensor`), possibly wrapped in a parameter
/// (`_rebuild_parameter[_with_state]`, PyTorch 0.4's `Parameter(data, ..)`)
/// or a tensor subclass (`_rebuild_from_type_v2`).
pub(crate) fn tensor_view(heap: &Heap, value: &Value) -> ParseResult<View> {
    let Some(Obj::Call { func, args, .. }) = heap.get(value) else {
        return Err(ParseError::unsupported(format!(
            "the value is {}, not a tensor",
            heap.type_name(value)
        )));
    };
    let (mut func, mut args) = (func, args);
    // Wrappers nest a level or two; more is not something torch writes.
    for _ in 0..4 {
        let name = heap.global(func).unwrap_or(("?", "?"));
        let items = tuple(heap, args, "the arguments of a tensor")?;
        let inner = match name {
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter") => {
                let data = items
                    .first()
                    .ok_or_else(|| ParseError::corrupt("parameter without data"))?;
                match heap.get(data) {
                    Some(Obj::Call { func, args, .. }) => (func, args),
                    _ => {
                        return Err(ParseError::corrupt(format!(
                            "a parameter's data is {}, not a tensor",
                            heap.type_name(data)
                        )))
                    }
                }
            }
            ("torch._utils", "_rebuild_from_type_v2") => {
                let [f, _ty, a, ..] = items else {
                    return Err(ParseError::corrupt("too few arguments to rebuild a tensor"));
                };
                (f, a)
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let [storage, offset, size, stride, ..] = items else {
                    return Err(ParseError::corrupt("too few arguments to rebuild a tensor"));
                };
                let storage = storage_id(heap, storage)?;
                let size = index_tuple(heap, size, "the size")?;
                let stride = index_tuple(heap, stride, "the stride")?;
                if size.len() != stride.len() {
                    return Err(ParseError::corrupt("size and stride differ in length"));
                }
                return Ok(View {
                    storage,
                    offset: index(offset, "the storage offset")?,
                    size,
                    stride,
                });
            }
            (module, name) => {
                return Err(ParseError::unsupported(format!(
                    "`{module}.{name}` tensors are not supported (only dense CPU/GPU tensors)"
                )))
            }
        };
        (func, args) = inner;
    }
    Err(ParseError::unsupported(
        "the tensor is wrapped more deeply than torch.save writes",
    ))
}

/// `('storage', torch.FloatStorage, key, location, numel[, view_metadata])`.
pub(crate) fn storage_id(heap: &Heap, v: &Value) -> ParseResult<StorageId> {
    let Some(Obj::PersistentId(pid)) = heap.get(v) else {
        return Err(ParseError::corrupt("a tensor's storage is not a storage"));
    };
    let pid = tuple(heap, pid, "a storage id")?;
    let [tag, ty, key, _location, numel, rest @ ..] = pid else {
        return Err(ParseError::corrupt("a storage id has too few fields"));
    };
    if str_key(tag) != Some("storage") {
        return Err(ParseError::corrupt("a persistent id is not a storage"));
    }
    let (module, name) = heap
        .global(ty)
        .ok_or_else(|| ParseError::corrupt("a storage type is not a global"))?;
    // Legacy files from GPU training name `torch.cuda.FloatStorage`.
    let ty = storage_type(name)
        .filter(|_| module == "torch" || module == "torch.cuda")
        .ok_or_else(|| {
            ParseError::unsupported(format!("storage type `{module}.{name}` is not supported"))
        })?;
    let key = str_key(key)
        .ok_or_else(|| ParseError::corrupt("a storage key is not a string"))?
        .to_owned();
    let view = match rest.first() {
        None | Some(Value::None) => None,
        Some(meta) => {
            let [_view_key, offset, size] = tuple(heap, meta, "a storage view")? else {
                return Err(ParseError::corrupt("a storage view has the wrong length"));
            };
            Some((
                index(offset, "a storage view offset")?,
                index(size, "a storage view size")?,
            ))
        }
    };
    Ok(StorageId {
        key,
        ty,
        numel: index(numel, "a storage size")?,
        view,
    })
}

/// Copy view `v` out of `bytes`, the bytes stored for its (root) storage,
/// in row-major order.
fn materialise(v: &View, bytes: &[u8], big_endian: bool) -> ParseResult<Tensor> {
    let s = &v.storage;
    let storage_bytes = s
        .numel
        .checked_mul(s.ty.size)
        .filter(|&n| n <= bytes.len())
        .ok_or_else(|| {
            ParseError::corrupt(format!(
                "storage `{}` holds {} bytes, less than {} {} values",
                s.key,
                bytes.len(),
                s.numel,
                s.ty.dtype
            ))
        })?;
    let bytes = &bytes[..storage_bytes];
    // A legacy storage view: the tensor's storage is a slice of the root.
    let (bytes, storage_numel) = match s.view {
        None => (bytes, s.numel),
        Some((offset, size)) => {
            let range = offset
                .checked_add(size)
                .filter(|&end| end <= s.numel)
                .map(|end| offset * s.ty.size..end * s.ty.size)
                .ok_or_else(|| {
                    ParseError::corrupt(format!(
                        "storage view ({offset}, {size}) reaches past storage `{}` of {} values",
                        s.key, s.numel
                    ))
                })?;
            (&bytes[range], size)
        }
    };
    let numel = v
        .size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| ParseError::corrupt("the tensor size overflows"))?;
    if numel > 0 {
        let last = v
            .size
            .iter()
            .zip(&v.stride)
            .try_fold(v.offset, |a, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| x.checked_add(a))
            });
        if last.is_none_or(|l| l >= storage_numel) {
            return Err(ParseError::corrupt(format!(
                "the view (offset {}, size {:?}, stride {:?}) reaches past its \
                 storage of {} values",
                v.offset, v.size, v.stride, storage_numel
            )));
        }
        // A view with more elements than its storage overlaps itself
        // (an expand()); refusing it bounds the copy by the file size.
        if numel > storage_numel {
            return Err(ParseError::unsupported(format!(
                "the tensor is an overlapping view ({numel} elements over a storage \
                 of {storage_numel}); save a .clone() of it"
            )));
        }
    }
    let shape = v.size.clone();
    if s.ty.dtype != "float32" {
        return Ok(Tensor {
            shape,
            data: TensorData::Other {
                dtype: s.ty.dtype.to_owned(),
            },
        });
    }
    let read = |i: usize| -> f32 {
        let b = [
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ];
        if big_endian {
            f32::from_be_bytes(b)
        } else {
            f32::from_le_bytes(b)
        }
    };
    // The stride of a size-1 dimension is arbitrary (and may be huge): zero it.
    let stride: Vec<usize> = v
        .size
        .iter()
        .zip(&v.stride)
        .map(|(&d, &s)| if d == 1 { 0 } else { s })
        .collect();
    let mut data = Vec::with_capacity(numel);
    if numel > 0 && is_contiguous(&v.size, &stride) {
        let run = &bytes[4 * v.offset..4 * (v.offset + numel)];
        data.extend(run.chunks_exact(4).map(|b| {
            let b = [b[0], b[1], b[2], b[3]];
            if big_endian {
                f32::from_be_bytes(b)
            } else {
                f32::from_le_bytes(b)
            }
        }));
    } else if numel > 0 {
        // Odometer over the multi-index; `at` is the storage index.
        let mut idx = vec![0usize; v.size.len()];
        let mut at = v.offset;
        for _ in 0..numel {
            data.push(read(at));
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                at += stride[d];
                if idx[d] < v.size[d] {
                    break;
                }
                at -= stride[d] * v.size[d];
                idx[d] = 0;
            }
        }
    }
    Ok(Tensor {
        shape,
        data: TensorData::F32(data),
    })
}

/// Row-major contiguity, ignoring the strides of size-1 dimensions.
fn is_contiguous(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in size.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}
