//! PyTorch's legacy checkpoint format: what `torch.save` wrote before
//! PyTorch 1.6 (and still writes with `_use_new_zipfile_serialization=False`),
//! e.g. CheXNet's `model.pth.tar`.
//!
//! The file is five pickles back to back, then the storages' bytes:
//! 1. the magic number `0x1950a86a20f9469cfc6c`;
//! 2. the protocol version, 1001;
//! 3. system information: a dict with `little_endian` (and type sizes);
//! 4. the object, whose storages are persistent ids
//!    `('storage', torch.FloatStorage, key, location, numel, view_metadata)`
//!    (read by [`super::pth`]; a whole pickled module's classes are
//!    persistent ids `('module', cls, source_file, source)`);
//! 5. the list of storage keys, in the order their data follows;
//!
//! then, for each key, its element count as a little-endian `i64` and that
//! many elements' raw bytes (the element size is the declared storage
//! type's). Every count is checked against the declaration and against the
//! bytes left before anything is sliced; nothing is allocated in proportion
//! to a count. Big-endian files are refused.

use super::error::{ParseError, ParseResult};
use super::pickle::{self, Obj, Value};
use super::pth::{self, Pickled, StorageType};
use super::sniff::legacy_magic_len as magic_len;
use std::collections::HashMap;

/// The protocol version the legacy format records after its magic number.
const PROTOCOL_VERSION: i64 = 1001;

fn corrupt(message: impl Into<String>) -> ParseError {
    ParseError::corrupt(format!("legacy checkpoint: {}", message.into()))
}

/// One pickle of the sequence at `*pos`; advances `*pos` past it.
fn next_pickle(bytes: &[u8], pos: &mut usize, what: &str) -> ParseResult<(pickle::Heap, Value)> {
    let rest = bytes.get(*pos..).unwrap_or_default();
    if rest.is_empty() {
        return Err(corrupt(format!("the file ends before the {what}")));
    }
    let (heap, v, used) = pickle::load_prefix(rest).map_err(|e| match e {
        ParseError::Corrupt(m) => corrupt(format!("{what}: {m}")),
        ParseError::Unsupported(m) => ParseError::unsupported(format!("{what}: {m}")),
    })?;
    *pos += used;
    Ok((heap, v))
}

/// Parse a legacy checkpoint held in memory (its start already recognised
/// by [`magic_len`]).
pub(crate) fn parse(bytes: &[u8]) -> ParseResult<Pickled<'_>> {
    let mut pos = magic_len(bytes).ok_or_else(|| corrupt("no PyTorch magic number"))?;
    let (_, version) = next_pickle(bytes, &mut pos, "protocol version")?;
    if version != Value::Int(PROTOCOL_VERSION) {
        return Err(ParseError::unsupported(format!(
            "legacy checkpoint protocol version {version:?} (only {PROTOCOL_VERSION} exists)"
        )));
    }
    let (heap, info) = next_pickle(bytes, &mut pos, "system information")?;
    match heap.dict_get(&info, "little_endian") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            return Err(ParseError::unsupported(
                "this legacy checkpoint was written on a big-endian machine; re-save it \
                 there with torch.save(torch.load(path), new_path)",
            ))
        }
        _ => {
            return Err(corrupt(
                "the system information has no `little_endian` flag",
            ))
        }
    }
    let (heap, root) = next_pickle(bytes, &mut pos, "object")?;
    let (key_heap, key_list) = next_pickle(bytes, &mut pos, "storage key list")?;
    let keys: Vec<String> = match key_heap.get(&key_list) {
        Some(Obj::List(items)) => items
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.to_string()),
                Value::Bytes(b) => Ok(String::from_utf8_lossy(b).into_owned()),
                _ => Err(corrupt("a storage key is not a string")),
            })
            .collect::<ParseResult<_>>()?,
        _ => return Err(corrupt("the storage key list is not a list")),
    };

    // The element type of every storage, from its first declaration.
    let mut declared: HashMap<String, (StorageType, usize)> = HashMap::new();
    for (v, obj) in heap.iter() {
        if let Obj::PersistentId(_) = obj {
            // A malformed id surfaces when its tensor is read.
            if let Ok(id) = pth::storage_id(&heap, &v) {
                declared.entry(id.key).or_insert((id.ty, id.numel));
            }
        }
    }
    let name = |key: &str| match super::find::tensor_using(&heap, &root, key) {
        Some(path) => format!("storage `{key}` (of tensor `{path}`)"),
        None => format!("storage `{key}`"),
    };
    let mut storages: HashMap<String, &[u8]> = HashMap::with_capacity(keys.len().min(1 << 16));
    let count = keys.len();
    for (i, key) in keys.into_iter().enumerate() {
        let &(ty, numel) = declared.get(&key).ok_or_else(|| {
            corrupt(format!(
                "storage `{key}` is listed but no tensor of the object uses it"
            ))
        })?;
        let header = pos
            .checked_add(8)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(|| {
                corrupt(format!(
                    "the file ends before {} ({} of {count}): it is truncated",
                    name(&key),
                    i + 1
                ))
            })?;
        let mut n = [0u8; 8];
        n.copy_from_slice(header);
        let stored = i64::from_le_bytes(n);
        if usize::try_from(stored).ok() != Some(numel) {
            return Err(corrupt(format!(
                "{} declares {numel} {} values, but its data says {stored}",
                name(&key),
                ty.dtype
            )));
        }
        pos += 8;
        let left = bytes.len() - pos;
        let len = numel
            .checked_mul(ty.size)
            .filter(|&len| len <= left)
            .ok_or_else(|| {
                corrupt(format!(
                    "the file ends inside {} ({} of {count}): {numel} {} values need \
                     {} bytes, {left} are left; it is truncated",
                    name(&key),
                    i + 1,
                    ty.dtype,
                    numel.saturating_mul(ty.size)
                ))
            })?;
        if storages
            .insert(key.clone(), &bytes[pos..pos + len])
            .is_some()
        {
            return Err(corrupt(format!("storage `{key}` is listed twice")));
        }
        pos += len;
    }
    Ok(Pickled::legacy(heap, root, storages))
}
