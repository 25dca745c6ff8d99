//! Retrieval on the reference fixture: top-k ids identical to FAISS's (`cases.json`, computed by
//! faiss-cpu `IndexFlatIP.search`) for every image case, reading the FAISS file directly and after
//! converting it to our folder format; CLIP token ids identical to `clip.tokenize`.

mod common;
use common::*;
use smallcap_datastore::captions::read_json_list;
use smallcap_datastore::store::StoreOptions;
use smallcap_datastore::{Datastore, Dtype, FaissIndex, FlatIndex};

#[test]
fn flat_index_rows_equal_reference_embeddings() {
    let idx = FlatIndex::open(fixture("datastore_index")).unwrap();
    assert_eq!((idx.len(), idx.dim()), (588, 32));
    let expected = tensor("caption_embeddings");
    let set = idx.vectors();
    for i in 0..idx.len() {
        assert_eq!(set.row(i), expected[i * 32..(i + 1) * 32], "row {i}");
    }
}

#[test]
fn image_cases_match_faiss_on_the_faiss_file() {
    let idx = FlatIndex::open(fixture("datastore_index")).unwrap();
    let any = FaissIndex::open(fixture("datastore_index")).unwrap();
    let cases = image_cases();
    assert_eq!(cases.len(), 11);
    // one query at a time, and all queries as one batch
    let mut batch = Vec::new();
    for (name, q, want, scores) in &cases {
        let got = smallcap_datastore::top_k(&idx.vectors(), q, 32, 8).unwrap();
        assert_eq!(ids(&got[0]), *want, "{name}");
        for (h, s) in got[0].iter().zip(scores) {
            assert!((h.1 - s).abs() < 1e-5, "{name}: score {} vs faiss {s}", h.1);
        }
        assert_eq!(
            ids(&any.search(q, 32, 8, None).unwrap()[0]),
            *want,
            "{name}"
        );
        batch.extend_from_slice(q);
    }
    let got = smallcap_datastore::top_k(&idx.vectors(), &batch, 32, 8).unwrap();
    for ((name, _, want, _), g) in cases.iter().zip(&got) {
        assert_eq!(ids(g), *want, "{name} (batched)");
    }
}

#[test]
fn converted_store_f32_gives_the_same_ids_and_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store");
    let opts = StoreOptions {
        encoder: "openai-clip:tiny-random".into(),
        dtype: Dtype::F32,
    };
    let ds = Datastore::from_faiss(
        fixture("datastore_index"),
        fixture("datastore_captions.json"),
        &out,
        &opts,
    )
    .unwrap();
    ds.verify().unwrap();
    let ds = Datastore::open(&out).unwrap();
    assert_eq!((ds.len(), ds.dim(), ds.dtype()), (588, 32, Dtype::F32));
    let c = cases();
    for ((name, q, want, _), case) in image_cases()
        .iter()
        .zip(c["image_cases"].as_array().unwrap())
    {
        let got = ds.search(q, 32, 8).unwrap();
        assert_eq!(ids(&got[0]), *want, "{name}");
        let caps: Vec<String> = got[0]
            .iter()
            .map(|h| ds.caption(h.0 as usize).unwrap().text)
            .collect();
        let want_caps: Vec<String> = case["top_captions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(caps, want_caps, "{name}");
    }
    // and back to FAISS + JSON list: identical vectors and captions
    let back_idx = tmp.path().join("back_index");
    let back_caps = tmp.path().join("back_captions.json");
    ds.to_faiss(&back_idx, &back_caps).unwrap();
    assert_eq!(
        std::fs::read(&back_idx).unwrap(),
        std::fs::read(fixture("datastore_index")).unwrap()
    );
    assert_eq!(
        read_json_list(&back_caps).unwrap(),
        read_json_list(fixture("datastore_captions.json")).unwrap()
    );
}

#[test]
fn converted_store_f16_scores_within_f16_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store16");
    let opts = StoreOptions {
        encoder: "openai-clip:tiny-random".into(),
        dtype: Dtype::F16,
    };
    let ds = Datastore::from_faiss(
        fixture("datastore_index"),
        fixture("datastore_captions.json"),
        &out,
        &opts,
    )
    .unwrap();
    assert_eq!(
        std::fs::metadata(out.join("embeddings.bin")).unwrap().len(),
        588 * 32 * 2
    );
    for (name, q, want, scores) in image_cases() {
        let got = ds.search(&q, 32, 8).unwrap();
        // f16 rounding moves each coordinate by at most 2^-11 relative, so each score by at most
        // 2^-11·Σ|q_i v_i| ≤ 2^-11 (unit vectors): rank-wise scores stay within 1e-3 of FAISS's.
        for (r, (h, s)) in got[0].iter().zip(&scores).enumerate() {
            assert!((h.1 - s).abs() < 1e-3, "{name} rank {r}: {} vs {s}", h.1);
        }
        // ranks whose FAISS score gap to both neighbours exceeds 2e-3 cannot move
        for r in 0..8 {
            let gap_prev = if r == 0 {
                1.0
            } else {
                scores[r - 1] - scores[r]
            };
            let gap_next = if r == 7 {
                1.0
            } else {
                scores[r] - scores[r + 1]
            };
            if gap_prev > 2e-3 && gap_next > 2e-3 {
                assert_eq!(got[0][r].0, want[r], "{name} rank {r}");
            }
        }
    }
}
