//! PyTorch checkpoints as `torch.save` writes them (PyTorch >= 1.6).
//!
//! The file is a zip archive (see [`super::zip`]) whose entries share one
//! top-level folder `<archive>/`:
//! - `data.pkl`: the pickled object (see [`super::pickle`]); tensors are
//!   `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
//!   calls whose storage is a persistent id
//!   `('storage', torch.FloatStorage, key, location, numel)`;
//! - `data/<key>`: the raw bytes of each storage;
//! - `byteorder`: `little` or `big` (absent in old files: little).
//!
//! The object is a state dict, or a dict that wraps one under `state_dict`,
//! `model_state_dict` or `model`. Tensors may be any strided view of their
//! storage (offset, non-contiguous strides); they are copied out in
//! row-major order. Only float32 values are decoded; other dtypes are
//! checked for bounds and kept as [`TensorData::Other`].

use super::error::{ParseError, ParseResult};
use super::pickle::{self, Heap, Obj, Value};
use super::zip::Archive;
use super::{Tensor, TensorData, TensorMap};
use std::collections::HashMap;

/// Keys under which a training checkpoint commonly wraps its state dict.
const WRAPPER_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];

/// Parse a torch.save zip checkpoint held in memory.
pub(crate) fn parse(bytes: &[u8]) -> ParseResult<TensorMap> {
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
    let entries = state_dict_entries(&heap, &root)?;
    let mut storages = Storages {
        zip: &zip,
        prefix: &prefix,
        cache: HashMap::new(),
    };
    let mut out = TensorMap::new();
    for (name, value) in entries {
        let view = tensor_view(&heap, value).map_err(|e| in_tensor(&name, e))?;
        let tensor = storages
            .materialise(&view, big_endian)
            .map_err(|e| in_tensor(&name, e))?;
        out.insert(name, tensor);
    }
    Ok(out)
}

fn in_tensor(name: &str, e: ParseError) -> ParseError {
    match e {
        ParseError::Corrupt(m) => ParseError::Corrupt(format!("tensor `{name}`: {m}")),
        ParseError::Unsupported(m) => ParseError::Unsupported(format!("tensor `{name}`: {m}")),
    }
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

fn str_key(v: &Value) -> Option<&str> {
    match v {
        Value::Str(s) => Some(s),
        _ => None,
    }
}

/// The `(name, tensor value)` items of the state dict in the pickle.
fn state_dict_entries(heap: &Heap, root: &Value) -> ParseResult<Vec<(String, Value)>> {
    let mut current = root.clone();
    let mut path = String::from("the checkpoint");
    // A dict may wrap the state dict, possibly twice ({'model': {'state_dict': ..}}).
    for _ in 0..4 {
        let Some(Obj::Dict(items)) = heap.get(&current) else {
            let hint = match heap.get(&current) {
                Some(Obj::Call { .. }) => {
                    "; it looks like a whole pickled model (torch.save(model)): \
                     save model.state_dict() instead"
                }
                _ => "",
            };
            return Err(ParseError::unsupported(format!(
                "{path} holds {}, not a dict of tensors{hint}",
                heap.type_name(&current)
            )));
        };
        // Only a dict (or a pickled object, refused with a hint) can be a
        // wrapped state dict: `{'model': 'densenet121', 'state_dict': ..}`.
        let wrapped = WRAPPER_KEYS.iter().find_map(|&key| {
            items
                .iter()
                .rev()
                .find(|(k, _)| str_key(k) == Some(key))
                .filter(|(_, v)| matches!(heap.get(v), Some(Obj::Dict(_) | Obj::Call { .. })))
                .map(|(_, v)| (key, v))
        });
        match wrapped {
            Some((key, v)) => {
                path = format!("entry `{key}` of the checkpoint");
                current = v.clone();
            }
            None if items
                .iter()
                .any(|(_, v)| matches!(heap.get(v), Some(Obj::Dict(_)))) =>
            {
                let keys: Vec<String> = items
                    .iter()
                    .take(10)
                    .map(|(k, _)| match str_key(k) {
                        Some(k) => format!("`{k}`"),
                        None => heap.type_name(k),
                    })
                    .collect();
                return Err(ParseError::unsupported(format!(
                    "{path} is a dict (keys {}) that is not a state dict; densenetc \
                     looks for the state dict at the top level or under `{}`",
                    keys.join(", "),
                    WRAPPER_KEYS.join("`, `")
                )));
            }
            None => {
                return items
                    .iter()
                    .map(|(k, v)| match str_key(k) {
                        Some(k) => Ok((k.to_owned(), v.clone())),
                        None => Err(ParseError::unsupported(format!(
                            "{path} has a key that is {}, not a tensor name",
                            heap.type_name(k)
                        ))),
                    })
                    .collect();
            }
        }
    }
    Err(ParseError::unsupported(
        "the checkpoint nests `state_dict`/`model` entries too deeply",
    ))
}

/// An element type of a storage.
#[derive(Debug, Clone, Copy)]
struct StorageType {
    dtype: &'static str,
    size: usize,
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

/// A tensor as the pickle describes it: a strided view of a storage.
#[derive(Debug)]
struct View {
    key: String,
    ty: StorageType,
    /// Elements in the storage, as declared.
    numel: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
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

/// Interpret a state dict value as a tensor: a `_rebuild_tensor_v2` call,
/// possibly wrapped in a `_rebuild_parameter` call.
fn tensor_view(heap: &Heap, value: Value) -> ParseResult<View> {
    let mut value = value;
    // Parameters wrap a tensor; two levels is more than torch ever writes.
    for _ in 0..3 {
        let Some(Obj::Call { func, args }) = heap.get(&value) else {
            break;
        };
        let func = heap.global(func).unwrap_or(("?", "?"));
        let args = tuple(heap, args, "the arguments of a tensor")?;
        match func {
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                value = args
                    .first()
                    .ok_or_else(|| ParseError::corrupt("parameter without data"))?
                    .clone();
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let [storage, offset, size, stride, ..] = args else {
                    return Err(ParseError::corrupt("too few arguments to rebuild a tensor"));
                };
                let (key, ty, numel) = storage_id(heap, storage)?;
                let size = index_tuple(heap, size, "the size")?;
                let stride = index_tuple(heap, stride, "the stride")?;
                if size.len() != stride.len() {
                    return Err(ParseError::corrupt("size and stride differ in length"));
                }
                return Ok(View {
                    key,
                    ty,
                    numel,
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
        }
    }
    Err(ParseError::unsupported(format!(
        "the value is {}, not a tensor",
        heap.type_name(&value)
    )))
}

/// `('storage', torch.FloatStorage, key, location, numel)`.
fn storage_id(heap: &Heap, v: &Value) -> ParseResult<(String, StorageType, usize)> {
    let Some(Obj::PersistentId(pid)) = heap.get(v) else {
        return Err(ParseError::corrupt("a tensor's storage is not a storage"));
    };
    let pid = tuple(heap, pid, "a storage id")?;
    let [tag, ty, key, _location, numel, ..] = pid else {
        return Err(ParseError::corrupt("a storage id has too few fields"));
    };
    if str_key(tag) != Some("storage") {
        return Err(ParseError::corrupt("a persistent id is not a storage"));
    }
    let (module, name) = heap
        .global(ty)
        .ok_or_else(|| ParseError::corrupt("a storage type is not a global"))?;
    let ty = storage_type(name)
        .filter(|_| module == "torch")
        .ok_or_else(|| {
            ParseError::unsupported(format!("storage type `{module}.{name}` is not supported"))
        })?;
    let key = str_key(key)
        .ok_or_else(|| ParseError::corrupt("a storage key is not a string"))?
        .to_owned();
    Ok((key, ty, index(numel, "a storage size")?))
}

struct Storages<'z, 'a> {
    zip: &'z Archive<'a>,
    prefix: &'z str,
    cache: HashMap<String, &'a [u8]>,
}

impl<'a> Storages<'_, 'a> {
    fn bytes(&mut self, key: &str) -> ParseResult<&'a [u8]> {
        if let Some(b) = self.cache.get(key) {
            return Ok(b);
        }
        let b = self
            .zip
            .read(&format!("{}data/{key}", self.prefix))?
            .ok_or_else(|| ParseError::corrupt(format!("storage `data/{key}` is missing")))?;
        self.cache.insert(key.to_owned(), b);
        Ok(b)
    }

    /// Copy a view out of its storage in row-major order.
    fn materialise(&mut self, v: &View, big_endian: bool) -> ParseResult<Tensor> {
        let bytes = self.bytes(&v.key)?;
        let storage_bytes = v
            .numel
            .checked_mul(v.ty.size)
            .filter(|&n| n <= bytes.len())
            .ok_or_else(|| {
                ParseError::corrupt(format!(
                    "storage `data/{}` holds {} bytes, less than {} {} values",
                    v.key,
                    bytes.len(),
                    v.numel,
                    v.ty.dtype
                ))
            })?;
        let bytes = &bytes[..storage_bytes];
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
            if last.is_none_or(|l| l >= v.numel) {
                return Err(ParseError::corrupt(format!(
                    "the view (offset {}, size {:?}, stride {:?}) reaches past its \
                     storage of {} values",
                    v.offset, v.size, v.stride, v.numel
                )));
            }
            // A view with more elements than its storage overlaps itself
            // (an expand()); refusing it bounds the copy by the file size.
            if numel > v.numel {
                return Err(ParseError::unsupported(format!(
                    "the tensor is an overlapping view ({numel} elements over a storage \
                     of {}); save a .clone() of it",
                    v.numel
                )));
            }
        }
        let shape = v.size.clone();
        if v.ty.dtype != "float32" {
            return Ok(Tensor {
                shape,
                data: TensorData::Other {
                    dtype: v.ty.dtype.to_owned(),
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
