//! The artefact format: round trip through writer and reader, alignment, and one test per
//! kind of rejection with the message a user sees.

mod common;

use common::{toy_artefact_bytes, toy_manifest, weights_bytes};
use runtime::artefact::{format, SectionInfo, FORMAT_VERSION, MAGIC};
use runtime::hash::xxh64;
use runtime::{Artefact, ArtefactError, ArtefactWriter, Error, SectionKind};

const FAKE_SO: &[u8] = b"\x7fELF not really: the reader never executes it";

fn toy() -> Vec<u8> {
    toy_artefact_bytes(FAKE_SO)
}

fn read_err(bytes: &[u8]) -> ArtefactError {
    match Artefact::read(bytes) {
        Err(Error::Artefact(e)) => e,
        Err(e) => panic!("expected an artefact error, got {e}"),
        Ok(_) => panic!("expected an error, the artefact was accepted"),
    }
}

fn section(bytes: &[u8], kind: SectionKind) -> SectionInfo {
    *Artefact::read(bytes)
        .expect("valid")
        .sections()
        .iter()
        .find(|s| s.kind == kind)
        .expect("section present")
}

/// Rewrites the header checksum after an edit of the header, so a later check is reached.
fn reseal_header(bytes: &mut [u8]) {
    let sum = xxh64(&bytes[..56]);
    bytes[56..64].copy_from_slice(&sum.to_le_bytes());
}

/// Rewrites the table checksum (and then the header's) after an edit of the section table.
fn reseal_table(bytes: &mut [u8]) {
    let count = u32::from_le_bytes(bytes[32..36].try_into().expect("4 bytes")) as usize;
    let sum = xxh64(&bytes[64..64 + count * 32]);
    bytes[40..48].copy_from_slice(&sum.to_le_bytes());
    reseal_header(bytes);
}

#[test]
fn round_trip_keeps_manifest_and_sections() {
    let bytes = toy();
    let a = Artefact::read(&bytes).expect("valid artefact");
    assert_eq!(a.format_version(), FORMAT_VERSION);
    assert_eq!(a.manifest(), &toy_manifest());
    assert_eq!(
        a.section(SectionKind::Weights),
        Some(weights_bytes().as_slice())
    );
    assert_eq!(a.section(SectionKind::CpuSharedObject), Some(FAKE_SO));
    assert_eq!(a.section(SectionKind::Ptx), None);
    assert_eq!(a.file_len(), bytes.len());
    assert_eq!(&bytes[..8], &MAGIC);
    for s in a.sections() {
        assert_eq!(
            s.offset % 64,
            0,
            "section {} misaligned in the file",
            s.kind
        );
        let data = a.section(s.kind).expect("listed section");
        assert_eq!(
            data.as_ptr() as usize % 64,
            0,
            "section {} misaligned in memory",
            s.kind
        );
        assert_eq!(xxh64(data), s.checksum);
    }
}

#[test]
fn open_reads_a_file_written_by_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("toy.dnc");
    let mut w = ArtefactWriter::new(toy_manifest());
    w.add_section(SectionKind::Weights, weights_bytes())
        .expect("weights");
    w.add_section(SectionKind::CpuSharedObject, FAKE_SO.to_vec())
        .expect("so");
    w.write(&path).expect("write");
    let a = Artefact::open(&path).expect("open");
    assert_eq!(a.manifest(), &toy_manifest());
    assert_eq!(std::fs::read(&path).expect("read"), toy());
}

#[test]
fn writer_is_deterministic() {
    assert_eq!(toy(), toy());
}

#[test]
fn open_reports_missing_files_with_their_path() {
    let e = Artefact::open(std::path::Path::new("/nonexistent/x.dnc")).expect_err("missing");
    assert!(matches!(e, Error::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/x.dnc"), "{e}");
}

#[test]
fn foreign_files_have_a_bad_magic() {
    assert_eq!(
        read_err(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"),
        ArtefactError::BadMagic
    );
    assert_eq!(read_err(b"PK"), ArtefactError::BadMagic);
    assert_eq!(
        read_err(b""),
        ArtefactError::Truncated("0 bytes, shorter than the 64-byte header".into())
    );
    assert_eq!(
        ArtefactError::BadMagic.to_string(),
        "not a densenetc artefact (bad magic)"
    );
}

#[test]
fn other_versions_are_refused_by_number() {
    let mut b = toy();
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    let e = read_err(&b);
    assert_eq!(
        e,
        ArtefactError::UnsupportedVersion {
            found: 7,
            supported: FORMAT_VERSION
        }
    );
    assert_eq!(
        e.to_string(),
        "unsupported format version 7 (this runtime reads 1)"
    );
}

#[test]
fn truncation_is_reported_as_such() {
    let b = toy();
    for len in [10, 63, 64, 200, b.len() - 1] {
        let e = read_err(&b[..len]);
        assert!(
            matches!(e, ArtefactError::Truncated(_)),
            "length {len}: {e}"
        );
        assert!(e.to_string().starts_with("truncated"), "{e}");
    }
}

#[test]
fn appended_bytes_are_refused() {
    let mut b = toy();
    b.push(0);
    assert!(matches!(read_err(&b), ArtefactError::Malformed(m) if m.contains("after the end")));
}

#[test]
fn a_corrupt_section_is_named() {
    for (kind, name) in [
        (SectionKind::Weights, "weights"),
        (SectionKind::CpuSharedObject, "cpu_so"),
        (SectionKind::Manifest, "manifest"),
    ] {
        let mut b = toy();
        let s = section(&b, kind);
        b[s.offset as usize + 1] ^= 0x20;
        let e = read_err(&b);
        assert_eq!(e, ArtefactError::SectionChecksum(name));
        assert_eq!(e.to_string(), format!("section '{name}' checksum mismatch"));
    }
}

#[test]
fn header_and_table_corruption_is_detected() {
    let mut b = toy();
    b[20] ^= 1;
    assert_eq!(read_err(&b), ArtefactError::HeaderChecksum);
    let mut b = toy();
    b[64 + 8] ^= 1;
    assert_eq!(read_err(&b), ArtefactError::TableChecksum);
}

#[test]
fn out_of_bounds_and_misaligned_sections_are_refused_before_reading_them() {
    // Entry 1 (weights): offset at bytes 64+32+8, length at 64+32+16.
    let entry = 64 + 32;
    let cases: [(usize, u64, &str); 4] = [
        (entry + 16, u64::MAX, "past the end"),
        (entry + 8, u64::MAX - 63, "past the end"),
        (entry + 8, 64 * 1000, "past the end"),
        (entry + 8, 65, "aligned"),
    ];
    for (at, value, message) in cases {
        let mut b = toy();
        b[at..at + 8].copy_from_slice(&value.to_le_bytes());
        reseal_table(&mut b);
        let e = read_err(&b);
        assert!(
            matches!(&e, ArtefactError::Malformed(m) if m.contains(message)),
            "{value}: {e}"
        );
    }
}

#[test]
fn overlapping_sections_are_refused() {
    let mut b = toy();
    let manifest = section(&b, SectionKind::Manifest);
    // Point the weights at the manifest's offset.
    b[64 + 32 + 8..64 + 32 + 16].copy_from_slice(&manifest.offset.to_le_bytes());
    reseal_table(&mut b);
    assert!(matches!(read_err(&b), ArtefactError::Malformed(m) if m.contains("overlaps")));
}

#[test]
fn unknown_kinds_duplicates_and_flags_are_refused() {
    for (at, value, message) in [
        (64 + 32, 99u32, "unknown kind 99"),
        (64 + 32, 1, "twice"),
        (64 + 32 + 4, 1, "flags"),
    ] {
        let mut b = toy();
        b[at..at + 4].copy_from_slice(&value.to_le_bytes());
        reseal_table(&mut b);
        let e = read_err(&b);
        assert!(
            matches!(&e, ArtefactError::Malformed(m) if m.contains(message)),
            "{e}"
        );
    }
}

#[test]
fn absurd_section_counts_are_refused_without_allocating() {
    let mut b = toy();
    b[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal_header(&mut b);
    assert!(matches!(read_err(&b), ArtefactError::Malformed(m) if m.contains("sections")));
}

#[test]
fn non_zero_padding_is_refused() {
    let mut b = toy();
    let weights = section(&b, SectionKind::Weights);
    let pad = (weights.offset + weights.len) as usize;
    assert!(
        !pad.is_multiple_of(64),
        "the toy artefact has padding after its weights"
    );
    b[pad] = 1;
    assert!(matches!(read_err(&b), ArtefactError::Malformed(m) if m.contains("padding")));
}

#[test]
fn manifest_errors_say_what_is_wrong() {
    let mut m = toy_manifest();
    m.input.shape = vec![3, 3, 4, 4];
    let e = ArtefactWriter::new(m)
        .to_bytes()
        .expect_err("batch mismatch");
    assert!(
        e.to_string().starts_with(
            "manifest invalid: tensor 'input' has shape [3, 3, 4, 4] but the batch is 2"
        ),
        "{e}"
    );

    let mut m = toy_manifest();
    m.labels = Some(vec!["only one".into()]);
    let mut w = ArtefactWriter::new(m);
    w.add_section(SectionKind::CpuSharedObject, vec![])
        .expect("so");
    assert_eq!(
        w.to_bytes().expect_err("labels").to_string(),
        "manifest invalid: 1 labels for 5 output classes"
    );

    // The CPU target needs its shared object.
    let e = ArtefactWriter::new(toy_manifest())
        .to_bytes()
        .expect_err("no so");
    assert_eq!(e, ArtefactError::MissingSection("cpu_so"));

    let mut m = toy_manifest();
    m.output.shape = vec![2, usize::MAX / 2];
    let mut w = ArtefactWriter::new(m);
    w.add_section(SectionKind::CpuSharedObject, vec![])
        .expect("so");
    assert!(w
        .to_bytes()
        .expect_err("huge")
        .to_string()
        .contains("too large"));
}

#[test]
fn a_manifest_that_is_not_json_is_reported() {
    // Replace the manifest's bytes by valid-checksum garbage of the same length.
    let mut b = toy();
    let s = section(&b, SectionKind::Manifest);
    let range = s.offset as usize..(s.offset + s.len) as usize;
    b[range.clone()].fill(b'x');
    let sum = xxh64(&b[range]);
    b[64 + 24..64 + 32].copy_from_slice(&sum.to_le_bytes());
    reseal_table(&mut b);
    let e = read_err(&b);
    assert!(
        e.to_string()
            .starts_with("manifest invalid: expected value"),
        "{e}"
    );
}

#[test]
fn writer_refuses_duplicate_and_manual_manifest_sections() {
    let mut w = ArtefactWriter::new(toy_manifest());
    w.add_section(SectionKind::Weights, vec![]).expect("first");
    assert!(w.add_section(SectionKind::Weights, vec![]).is_err());
    assert!(w.add_section(SectionKind::Manifest, vec![]).is_err());
}

#[test]
fn layout_constants_match_the_documentation() {
    assert_eq!(format::HEADER_LEN, 64);
    assert_eq!(format::ENTRY_LEN, 32);
    assert_eq!(format::SECTION_ALIGN, 64);
    for k in SectionKind::ALL {
        assert_eq!(SectionKind::from_code(k.code()), Some(k));
    }
}

#[test]
fn tensor_views_must_match_their_shape_and_fit_the_arena() {
    let write = |m: runtime::Manifest| {
        let mut w = ArtefactWriter::new(m);
        w.add_section(SectionKind::CpuSharedObject, vec![])
            .expect("so");
        w.to_bytes().expect_err("invalid view").to_string()
    };
    let mut m = toy_manifest();
    m.output.view.offset = 560;
    assert!(write(m).contains("extends past the 576-byte arena"));
    let mut m = toy_manifest();
    m.input.view.channels = 4;
    assert!(write(m).contains("inconsistent arena view"));
    let mut m = toy_manifest();
    m.input.view.offset = 2;
    assert!(write(m).contains("inconsistent arena view"));
    let mut m = toy_manifest();
    m.input.view.channel_offset = usize::MAX;
    assert!(write(m).contains("inconsistent arena view"));
    let mut m = toy_manifest();
    m.input.shape = vec![2, 96];
    assert!(write(m).contains("inconsistent arena view"));
    let mut m = toy_manifest();
    m.input.shape = vec![2, 3, 16];
    assert!(write(m).contains("only NCHW (rank 4) and NC (rank 2)"));
}
