//! Bad input gives a clear error naming the file and the problem, never a panic or a partial
//! output; interrupted writes leave nothing that `open` would take for a store.

mod common;
use common::*;
use smallcap_datastore::captions::{
    read_captions, read_coco, read_json_list, read_karpathy, read_text,
};
use smallcap_datastore::store::StoreOptions;
use smallcap_datastore::{
    CaptionRecord, Datastore, Dtype, Error, FaissIndex, FlatIndex, VectorSet,
};
use std::path::Path;

fn opts() -> StoreOptions {
    StoreOptions {
        encoder: "test".into(),
        dtype: Dtype::F32,
    }
}

fn index_bytes() -> Vec<u8> {
    std::fs::read(fixture("datastore_index")).unwrap()
}

fn open_err(bytes: &[u8]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("idx");
    std::fs::write(&p, bytes).unwrap();
    let e = FlatIndex::open(&p).unwrap_err().to_string();
    assert!(
        e.contains(&p.display().to_string()),
        "error does not name the file: {e}"
    );
    let e2 = FaissIndex::open(&p).unwrap_err().to_string();
    assert!(e2.contains(&p.display().to_string()), "{e2}");
    e
}

#[test]
fn faiss_header_fields_are_validated() {
    let good = index_bytes();
    let mut b = good.clone();
    b[..4].copy_from_slice(b"XxFI");
    assert!(open_err(&b).contains("wrong magic"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&0i32.to_le_bytes());
    assert!(open_err(&b).contains("invalid dimension d = 0"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&(-3i32).to_le_bytes());
    assert!(open_err(&b).contains("invalid dimension d = -3"));
    let mut b = good.clone();
    b[8..16].copy_from_slice(&(-1i64).to_le_bytes());
    assert!(open_err(&b).contains("invalid ntotal = -1"));
    // metric L2 with the IP fourcc, and an L2 index
    let mut b = good.clone();
    b[33..37].copy_from_slice(&1i32.to_le_bytes());
    assert!(open_err(&b).contains("metric"));
    let mut b = good.clone();
    b[..4].copy_from_slice(b"IxF2");
    b[33..37].copy_from_slice(&1i32.to_le_bytes());
    assert!(open_err(&b).contains("not inner product"));
    let mut b = good.clone();
    b[33..37].copy_from_slice(&7i32.to_le_bytes());
    assert!(open_err(&b).contains("metric_type 7"));
    // element count disagreeing with d·ntotal
    let mut b = good.clone();
    b[37..45].copy_from_slice(&5u64.to_le_bytes());
    assert!(open_err(&b).contains("d·ntotal"));
    // truncated file: one float missing, and the header cut short
    assert!(open_err(&good[..good.len() - 4]).contains("truncated"));
    assert!(open_err(&good[..20]).contains("truncated"));
    // trailing bytes
    let mut b = good.clone();
    b.extend_from_slice(&[0; 4]);
    assert!(open_err(&b).contains("disagrees"));
    // empty
    assert!(open_err(&[]).contains("empty"));
}

#[test]
fn query_dimension_and_k_are_checked() {
    let idx = FlatIndex::open(fixture("datastore_index")).unwrap();
    let q = vec![0.1f32; 33];
    match smallcap_datastore::top_k(&idx.vectors(), &q, 33, 4) {
        Err(Error::DimensionMismatch {
            expected: 32,
            found: 33,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let q = vec![0.1f32; 32];
    match smallcap_datastore::top_k(&idx.vectors(), &q, 32, 589) {
        Err(
            e @ Error::KTooLarge {
                k: 589,
                ntotal: 588,
            },
        ) => assert!(e.to_string().contains("larger than the store")),
        other => panic!("{other:?}"),
    }
    assert!(smallcap_datastore::top_k(&idx.vectors(), &q, 32, 0).is_err());
    assert!(smallcap_datastore::top_k(&idx.vectors(), &q[..31], 32, 1).is_err());
    assert_eq!(
        smallcap_datastore::top_k(&idx.vectors(), &q, 32, 588).unwrap()[0].len(),
        588
    );
}

#[test]
fn count_mismatch_between_index_and_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let caps: Vec<String> =
        serde_json::from_slice(&std::fs::read(fixture("datastore_captions.json")).unwrap())
            .unwrap();
    let short = tmp.path().join("caps.json");
    std::fs::write(&short, serde_json::to_vec(&caps[..587]).unwrap()).unwrap();
    let out = tmp.path().join("store");
    match Datastore::from_faiss(fixture("datastore_index"), &short, &out, &opts()) {
        Err(
            e @ Error::CountMismatch {
                vectors: 588,
                captions: 587,
                ..
            },
        ) => {
            assert!(e.to_string().contains("caps.json"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!out.exists());
    assert!(!tmp.path().join("store.partial").exists());
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn caption_files_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let empty = write(d, "empty.txt", b"");
    assert!(matches!(read_text(&empty), Err(Error::Empty { .. })));
    let blank = write(d, "blank.json", b"  \n");
    assert!(matches!(read_json_list(&blank), Err(Error::Empty { .. })));
    let bad = write(d, "latin1.txt", b"a caf\xe9\n");
    match read_text(&bad) {
        Err(e @ Error::NotUtf8 { offset: 5, .. }) => assert!(e.to_string().contains("latin1.txt")),
        other => panic!("{other:?}"),
    }
    let malformed = write(d, "bad.json", b"[\"a\", \"b\"");
    match read_json_list(&malformed) {
        Err(e @ Error::Json { .. }) => assert!(e.to_string().contains("bad.json"), "{e}"),
        other => panic!("{other:?}"),
    }
    let not_str = write(d, "num.json", b"[\"a\", 3]");
    assert!(read_json_list(&not_str)
        .unwrap_err()
        .to_string()
        .contains("item 1 is not a string"));
    let gap = write(d, "gap.json", br#"{"0": "a", "2": "c"}"#);
    assert!(read_json_list(&gap)
        .unwrap_err()
        .to_string()
        .contains("key \"2\""));
    let lead0 = write(d, "lead0.json", br#"{"0": "a", "01": "c"}"#);
    assert!(read_json_list(&lead0).is_err());
    let inner_blank = write(d, "gap.txt", b"a\n\nb\n");
    assert!(read_text(&inner_blank)
        .unwrap_err()
        .to_string()
        .contains("line 2 is empty"));
    let coco_missing = write(d, "coco.json", br#"{"annotations": [{"image_id": 1}]}"#);
    assert!(read_coco(&coco_missing)
        .unwrap_err()
        .to_string()
        .contains("caption"));
    let karpathy_no_train = write(
        d,
        "k.json",
        br#"{"images": [{"split": "test", "cocoid": 1, "sentences": [{"tokens": ["a"]}]}]}"#,
    );
    assert!(read_karpathy(&karpathy_no_train)
        .unwrap_err()
        .to_string()
        .contains("no sentences"));
    assert!(matches!(
        read_text(d.join("missing.txt")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn caption_readers_parse_each_format() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let t = write(d, "c.txt", b"a dog\r\nthe cat\n");
    assert_eq!(
        read_text(&t).unwrap(),
        vec![CaptionRecord::new("a dog"), CaptionRecord::new("the cat")]
    );
    let l = write(d, "l.json", br#"["x", "y"]"#);
    assert_eq!(
        read_captions(&l, None).unwrap(),
        vec![CaptionRecord::new("x"), CaptionRecord::new("y")]
    );
    let m = write(d, "m.json", br#"{"1": "second", "0": "first", "10": "k", "2": "c", "3": "d", "4": "e", "5": "f", "6": "g", "7": "h", "8": "i", "9": "j"}"#);
    let got: Vec<String> = read_captions(&m, None)
        .unwrap()
        .into_iter()
        .map(|c| c.text)
        .collect();
    assert_eq!(
        got,
        ["first", "second", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
    );
    let coco = write(d, "coco.json", br#"{"images": [], "annotations": [{"image_id": 7, "id": 1, "caption": "A b."}, {"image_id": 3, "id": 2, "caption": "c"}]}"#);
    assert_eq!(
        read_captions(&coco, None).unwrap(),
        vec![
            CaptionRecord {
                text: "A b.".into(),
                image_id: Some(7)
            },
            CaptionRecord {
                text: "c".into(),
                image_id: Some(3)
            }
        ]
    );
    let k = write(d, "dataset_coco.json", br#"{"images": [
        {"split": "train", "cocoid": 11, "filename": "x_11.jpg", "sentences": [{"tokens": ["a", "dog"], "raw": "A dog."}, {"tokens": ["two", "cats"], "raw": "x"}]},
        {"split": "val", "cocoid": 12, "filename": "x_12.jpg", "sentences": [{"tokens": ["no"], "raw": "x"}]},
        {"split": "restval", "cocoid": 13, "filename": "x_13.jpg", "sentences": [{"tokens": ["a", "red", "bus"], "raw": "x"}]}
    ], "dataset": "coco"}"#);
    let want = vec![
        CaptionRecord {
            text: "a dog".into(),
            image_id: Some(11),
        },
        CaptionRecord {
            text: "two cats".into(),
            image_id: Some(11),
        },
        CaptionRecord {
            text: "a red bus".into(),
            image_id: Some(13),
        },
    ];
    assert_eq!(read_captions(&k, None).unwrap(), want);
    assert_eq!(read_karpathy(&k).unwrap(), want);
}

fn small_store(dir: &Path, n: usize) -> (Vec<f32>, Datastore) {
    let emb = tensor("caption_embeddings");
    let caps = read_json_list(fixture("datastore_captions.json")).unwrap();
    let set = VectorSet::from_f32(&emb[..n * 32], 32).unwrap();
    let ds = Datastore::create(dir, &opts(), &set, &caps[..n]).unwrap();
    (emb, ds)
}

#[test]
fn interrupted_build_is_ignored_and_rebuild_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    // an interrupted build: a half-written .partial folder
    let partial = tmp.path().join("store.partial");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("embeddings.bin"), [1u8; 100]).unwrap();
    let e = Datastore::open(&out).unwrap_err().to_string();
    assert!(e.contains("interrupted build"), "{e}");
    let (_, ds) = small_store(&out, 588);
    assert_eq!(ds.len(), 588);
    assert!(!partial.exists());
    ds.verify().unwrap();
    // building again over an existing store is refused, and leaves it intact
    let again = Datastore::create(&out, &opts(), &ds.vectors(), &ds.captions().unwrap());
    assert!(again.unwrap_err().to_string().contains("already exists"));
    Datastore::open(&out).unwrap().verify().unwrap();
}

#[test]
fn add_appends_atomically_and_search_matches_faiss() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    let (emb, ds) = small_store(&out, 500);
    let caps = read_json_list(fixture("datastore_captions.json")).unwrap();
    // a failing add (count mismatch) leaves the store as it was
    let rest = VectorSet::from_f32(&emb[500 * 32..], 32).unwrap();
    let ds = match ds.add(&rest, &caps[500..587]) {
        Err(Error::CountMismatch { .. }) => Datastore::open(&out).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ds.len(), 500);
    let ds = ds.add(&rest, &caps[500..]).unwrap();
    assert_eq!(ds.len(), 588);
    assert!(!tmp.path().join("store.partial").exists() && !tmp.path().join("store.old").exists());
    ds.verify().unwrap();
    for (name, q, want, _) in image_cases() {
        assert_eq!(ids(&ds.search(&q, 32, 8).unwrap()[0]), want, "{name}");
    }
    assert_eq!(ds.captions().unwrap(), caps);
    // wrong dimension, and rows that are not normalised
    let ds = Datastore::open(&out).unwrap();
    let bad = VectorSet::from_f32(&emb[..33], 33).unwrap();
    assert!(matches!(
        ds.add(&bad, &caps[..1]),
        Err(Error::DimensionMismatch { .. })
    ));
    let ds = Datastore::open(&out).unwrap();
    let twice: Vec<f32> = emb[..32].iter().map(|x| 2.0 * x).collect();
    let e = ds
        .add(&VectorSet::from_f32(&twice, 32).unwrap(), &caps[..1])
        .unwrap_err();
    assert!(e.to_string().contains("not L2-normalised"), "{e}");
    assert_eq!(Datastore::open(&out).unwrap().len(), 588);
}

#[test]
fn store_files_disagreeing_with_the_manifest_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    let (_, ds) = small_store(&out, 20);
    drop(ds);
    // truncated embeddings
    let ep = out.join("embeddings.bin");
    let good = std::fs::read(&ep).unwrap();
    std::fs::write(&ep, &good[..good.len() - 2]).unwrap();
    let e = Datastore::open(&out).unwrap_err().to_string();
    assert!(
        e.contains("embeddings.bin") && e.contains("disagrees with the manifest"),
        "{e}"
    );
    // a flipped byte: open succeeds (O(1)), verify finds it
    let mut b = good.clone();
    b[5] ^= 1;
    std::fs::write(&ep, &b).unwrap();
    let e = Datastore::open(&out)
        .unwrap()
        .verify()
        .unwrap_err()
        .to_string();
    assert!(e.contains("SHA-256"), "{e}");
    std::fs::write(&ep, &good).unwrap();
    // caption count disagreeing with the manifest
    let op = out.join("captions.idx");
    let offs = std::fs::read(&op).unwrap();
    std::fs::write(&op, &offs[..offs.len() - 8]).unwrap();
    assert!(matches!(
        Datastore::open(&out),
        Err(Error::CountMismatch {
            vectors: 20,
            captions: 19,
            ..
        })
    ));
    std::fs::write(&op, &offs).unwrap();
    // manifest: wrong version, malformed
    let mp = out.join("manifest.json");
    let m = std::fs::read_to_string(&mp).unwrap();
    std::fs::write(
        &mp,
        m.replace("\"format_version\": 1", "\"format_version\": 9"),
    )
    .unwrap();
    assert!(Datastore::open(&out)
        .unwrap_err()
        .to_string()
        .contains("format_version 9"));
    std::fs::write(&mp, &m[..m.len() / 2]).unwrap();
    assert!(matches!(Datastore::open(&out), Err(Error::Json { .. })));
    std::fs::write(&mp, &m).unwrap();
    Datastore::open(&out).unwrap().verify().unwrap();
}
