//! Classifies one input with a compiled DenseNet artefact, through the runtime's Rust API.
//!
//! ```text
//! cargo run -p runtime --example classify -- MODEL.dnc [INPUT] [--device D] [--threads N] [--top K]
//! ```
//!
//! `--device` is `cpu` (the default, on `--threads` threads), `cuda` or `cuda:ORDINAL` (the
//! artefact must have been compiled with `--target cuda` or `cpu,cuda`).
//!
//! `INPUT` is an image (PNG or JPEG, preprocessed as torchvision's ImageNet eval transform by
//! `runtime::preprocess`, at the model's input size, repeated over its batch), a `.npy` float32
//! NCHW tensor, or a `.f32` file of raw little-endian f32 (NCHW, already preprocessed, what
//! `examples/c/classify.c` reads); without it a fixed synthetic input is used. Prints the top K
//! classes of each batch item, with names when the artefact carries labels. The C example
//! prints the same lines for the same tensor.

use std::process::ExitCode;

use runtime::{Device, Model};

struct Args {
    model: String,
    input: Option<String>,
    device: String,
    threads: usize,
    top: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let (mut threads, mut top, mut device) = (1, 5, "cpu".to_owned());
    while let Some(a) = args.next() {
        if a == "--device" {
            device = args.next().ok_or("--device needs cpu, cuda or cuda:N")?;
            continue;
        }
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match a.as_str() {
            "--threads" => threads = value("--threads")?,
            "--top" => top = value("--top")?,
            _ => positional.push(a),
        }
    }
    let mut positional = positional.into_iter();
    let model = positional
        .next()
        .ok_or("usage: classify MODEL.dnc [IMAGE|INPUT.npy|INPUT.f32] [--device cpu|cuda[:N]] [--threads N] [--top K]")?;
    Ok(Args {
        model,
        input: positional.next(),
        device,
        threads,
        top,
    })
}

/// The synthetic input shared with the C example. Its length comes from the artefact: a failed
/// allocation is an error, not an abort.
fn synthetic(len: usize) -> Result<Vec<f32>, String> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        format!(
            "cannot allocate {} bytes for the input",
            len.saturating_mul(4)
        )
    })?;
    v.extend((0..len).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5));
    Ok(v)
}

fn read_input(path: &str, len: usize) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if Some(bytes.len()) != len.checked_mul(4) {
        return Err(format!(
            "{path}: {} bytes, the model's input needs {}",
            bytes.len(),
            len.saturating_mul(4)
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let model = Model::load(&args.model).map_err(|e| format!("{}: {e}", args.model))?;
    let shape = model.input_shape().to_vec();
    let len: usize = shape.iter().product();
    // The session (its arena) first: an artefact too large for this machine fails here, before
    // an input of the same batch is built.
    let device = Device::parse(&args.device, args.threads).map_err(|e| e.to_string())?;
    let mut session = model.session(device).map_err(|e| e.to_string())?;
    let (input, shape) = match &args.input {
        Some(path) if path.ends_with(".f32") => (read_input(path, len)?, shape),
        // An image or a .npy tensor, told apart by their first bytes; the session checks the
        // tensor's shape.
        Some(path) => {
            let x = runtime::preprocess::load_input(path, &model).map_err(|e| e.to_string())?;
            (x.data, x.shape)
        }
        None => (synthetic(len)?, shape),
    };
    let logits = session.run(&input, &shape).map_err(|e| e.to_string())?;

    let classes = model.output_shape().last().copied().unwrap_or(1);
    for (item, row) in logits.chunks(classes).enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        // Highest score first; ties by class index, like the C example.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for (rank, &class) in order.iter().take(args.top).enumerate() {
            let label = model.labels().and_then(|l| l.get(class));
            let label = label.map(|l| format!(" ({l})")).unwrap_or_default();
            println!(
                "item {item}: #{} class {class} score {:.6}{label}",
                rank + 1,
                row[class]
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("classify: {e}");
            ExitCode::FAILURE
        }
    }
}
