//! safetensors files, through the `safetensors` crate (which validates the
//! header, offsets and sizes against the buffer).

use super::{Tensor, TensorData, TensorMap};
use safetensors::{Dtype, SafeTensorError, SafeTensors};

/// Parse a safetensors file held in memory.
pub(crate) fn parse(bytes: &[u8]) -> Result<TensorMap, SafeTensorError> {
    let st = SafeTensors::deserialize(bytes)?;
    let mut out = TensorMap::new();
    for (name, view) in st.iter() {
        let data = match view.dtype() {
            Dtype::F32 => TensorData::F32(
                view.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            other => TensorData::Other {
                dtype: dtype_name(other),
            },
        };
        out.insert(
            name.to_owned(),
            Tensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// PyTorch's spelling of a safetensors dtype, so messages read the same
/// whatever the file format.
fn dtype_name(d: Dtype) -> String {
    match d {
        Dtype::F64 => "float64".into(),
        Dtype::F16 => "float16".into(),
        Dtype::BF16 => "bfloat16".into(),
        Dtype::I64 => "int64".into(),
        Dtype::I32 => "int32".into(),
        Dtype::I16 => "int16".into(),
        Dtype::I8 => "int8".into(),
        Dtype::U8 => "uint8".into(),
        Dtype::BOOL => "bool".into(),
        other => other.to_string().to_lowercase(),
    }
}
