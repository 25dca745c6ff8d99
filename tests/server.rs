//! `smallcap serve` in-process on a loopback port with the fixture model: every endpoint, the
//! captions against the reference's, retrieval against FAISS's answers on the fixture datastore,
//! batching, the queue, timeouts, shutdown, and every kind of bad input.
//! Retrieval goes through the test double of the retrieval encoder in
//! `common/fixture_server.rs` (the reference's own query embeddings for the fixture images).

mod common;

use std::time::{Duration, Instant};

use candle_core::Device;
use common::fixture_server::*;
use common::http::{self, Part};
use common::serve_cli::spawn_serve;
use common::*;
use smallcap::captioner::{Captioner, Retrieval};
use smallcap::pipeline::Pipeline;
use smallcap::server::{Server, ServerConfig};

/// The fixture cases with retrieved captions, one per image.
fn retrieval_cases() -> Vec<Case> {
    let mut seen = std::collections::HashSet::new();
    cases()
        .into_iter()
        .filter(|c| c.k > 0 && seen.insert(c.image.clone()))
        .collect()
}

fn no_retrieval_case() -> Case {
    cases().into_iter().find(|c| c.k == 0).unwrap()
}

fn post_case(server: &Server, case: &Case, setting: &str) -> http::Resp {
    let bytes = image_bytes(&case.image);
    let name = file_name(&case.image);
    post_case_image(&server.addr().to_string(), case, &name, &bytes, setting)
}

#[test]
fn probes_openapi_page_and_metrics() {
    let server = start(ServerConfig::default(), None);
    let r = http::get(&url(&server, "/healthz"));
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = http::get(&url(&server, "/readyz"));
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready"))
    );
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));

    let r = http::get(&url(&server, "/openapi.json"));
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/v1/captions",
        "/v1/captions/batch",
        "/v1/retrieve",
        "/v1/datastores",
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }

    let r = http::get(&url(&server, "/"));
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let page = r.text();
    for needle in [
        "id=\"datastore\"",
        "type=\"file\"",
        "v1/captions",
        "retrieval_scores",
        "id=\"caption\"",
    ] {
        assert!(page.contains(needle), "the page lacks {needle}");
    }

    let r = http::get(&url(&server, "/v1/datastores"));
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["datastores"], serde_json::json!([]));
    assert_eq!(v["default"], serde_json::Value::Null);
    assert_eq!(v["k"], 4);

    let r = http::get(&url(&server, "/no/such/path"));
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = http::get(&url(&server, "/v1/captions"));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );

    let r = http::get(&url(&server, "/metrics"));
    assert_eq!(r.status, 200);
    let m = r.text();
    for needle in [
        "smallcap_requests_total{route=\"/healthz\",status=\"200\"} 1",
        "smallcap_request_errors_total{route=\"unmatched\",code=\"not_found\"} 1",
        "smallcap_request_duration_seconds_bucket{route=\"/readyz\",le=\"+Inf\"} 1",
        "# TYPE smallcap_request_duration_seconds histogram",
        "smallcap_queue_depth 0",
        "smallcap_ready 1",
    ] {
        assert!(m.contains(needle), "metrics lack {needle:?}:\n{m}");
    }
    server.shutdown().unwrap();
}

#[test]
fn captions_equal_the_reference_for_every_setting_and_both_upload_forms() {
    let server = start(ServerConfig::default(), None);
    let mut checked = 0;
    for case in retrieval_cases()
        .iter()
        .take(3)
        .chain([&no_retrieval_case()])
    {
        for setting in ["beam3_early", "beam3", "greedy"] {
            let r = post_case(&server, case, setting);
            assert_eq!(r.status, 200, "{}: {}", case.id, r.text());
            let v = r.json();
            let want = &case.expected[setting];
            assert_eq!(v["caption"], want.caption.as_str(), "{} {setting}", case.id);
            let used = case.retrieved_captions.clone().unwrap_or_default();
            assert_eq!(v["retrieved_captions"], serde_json::json!(used[..case.k]));
            assert_eq!(v["retrieval_scores"], serde_json::Value::Null);
            assert_eq!(v["datastore"], serde_json::Value::Null);
            for t in ["read", "decode", "queue", "retrieve", "caption", "total"] {
                assert!(v["timings_ms"][t].as_f64().unwrap() >= 0.0, "timing {t}");
            }
            assert_eq!(v["id"].as_str(), r.header("x-request-id"));
            checked += 1;
        }
    }
    assert_eq!(checked, 12);

    // A raw body with its content type, the parameters in the query string.
    let case = no_retrieval_case();
    let r = http::post(
        &url(&server, "/v1/captions?no_retrieval=true&beams=1"),
        "image/jpeg",
        &image_bytes(&case.image),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["caption"],
        case.expected["greedy"].caption.as_str()
    );
    let case = &retrieval_cases()[0];
    let mut q = String::from("/v1/captions?beams=3&early_stopping=true");
    for c in case.retrieved_captions.as_ref().unwrap() {
        q.push_str("&captions=");
        q.push_str(
            &c.replace(' ', "%20")
                .replace('(', "%28")
                .replace(')', "%29")
                .replace(',', "%2C"),
        );
    }
    let r = http::post(
        &url(&server, &q),
        "application/octet-stream",
        &image_bytes(&case.image),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["caption"],
        case.expected["beam3_early"].caption.as_str()
    );
    server.shutdown().unwrap();
}

#[test]
fn batch_endpoint_and_concurrent_clients_share_forward_passes() {
    let config = ServerConfig {
        max_batch: 8,
        batch_wait: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let server = start(config, None);
    let cases = retrieval_cases();

    // One request, several images: one forward pass, results in order.
    let imgs: Vec<(String, Vec<u8>)> = cases
        .iter()
        .take(4)
        .map(|c| (file_name(&c.image), image_bytes(&c.image)))
        .collect();
    let caps = cases[0].retrieved_captions.clone().unwrap();
    let mut parts: Vec<Part> = imgs
        .iter()
        .map(|(n, b)| Part::File {
            name: "image",
            filename: n,
            bytes: b,
        })
        .collect();
    for c in &caps {
        parts.push(Part::Field {
            name: "captions",
            value: c,
        });
    }
    parts.push(Part::Field {
        name: "beams",
        value: "1",
    });
    let r = http::post_multipart(&url(&server, "/v1/captions/batch"), &parts);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["batch_images"], 4);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    // The expected captions of the other images with the first case's captions come from the
    // library (verified against the reference in tests/model_reference.rs) captioning alone.
    let lib = captioner();
    let generation = smallcap::GenerationConfig {
        num_beams: 1,
        ..lib.default_generation()
    };
    for (res, (name, bytes)) in results.iter().zip(&imgs) {
        assert_eq!(res["image"], name.as_str());
        let px = lib.decode_image(bytes, name).unwrap();
        let item = lib
            .prepare(px, Retrieval::Captions(caps.clone()), 4)
            .unwrap();
        let alone = lib.caption(&[item], &generation).unwrap();
        assert_eq!(res["caption"], alone[0].caption.as_str(), "{name}");
    }
    assert_eq!(
        results[0]["caption"],
        cases[0].expected["greedy"].caption.as_str()
    );

    // Eight clients at once, each its own image and captions: forward passes are shared and every
    // caption is still the reference's.
    let addr = server.addr();
    let handles: Vec<_> = cases
        .iter()
        .cycle()
        .take(8)
        .cloned()
        .map(|case| {
            std::thread::spawn(move || {
                let bytes = image_bytes(&case.image);
                let name = file_name(&case.image);
                let r = post_case_image(&addr.to_string(), &case, &name, &bytes, "beam3_early");
                assert_eq!(r.status, 200, "{}", r.text());
                let v = r.json();
                assert_eq!(
                    v["caption"],
                    case.expected["beam3_early"].caption.as_str(),
                    "{}",
                    case.id
                );
                v["batch_images"].as_u64().unwrap()
            })
        })
        .collect();
    let sizes: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        sizes.iter().any(|&n| n > 1),
        "no two of 8 concurrent requests shared a forward pass: {sizes:?}"
    );
    let m = http::get(&url(&server, "/metrics")).text();
    let batches: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("smallcap_batches_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(batches < 1 + 8, "{batches} forward passes for 9 requests");
    assert!(m.contains("smallcap_images_captioned_total 12"), "{m}");
    server.shutdown().unwrap();
}

#[test]
fn datastore_retrieval_equals_faiss_and_switches_per_request() {
    let s = stores();
    let server = start(ServerConfig::default(), Some(s.retriever()));
    let r = http::get(&url(&server, "/v1/datastores"));
    let v = r.json();
    assert_eq!(
        v["datastores"],
        serde_json::json!([
            {"name": "coco", "size": datastore_captions().len()},
            {"name": "rows100", "size": 100}
        ])
    );
    assert_eq!(v["default"], "coco");

    let cases = image_cases();
    for c in &cases {
        // Image queries (raw body): the reference's FAISS top 8.
        let r = http::post(
            &url(&server, "/v1/retrieve?k=8&datastore=coco"),
            "image/png",
            &image_bytes(&c.image),
        );
        assert_eq!(r.status, 200, "{}: {}", c.image, r.text());
        let v = r.json();
        let res = &v["results"][0];
        assert_eq!(res["ids"], serde_json::json!(c.top_ids), "{}", c.image);
        assert_eq!(
            res["captions"],
            serde_json::json!(c.top_captions),
            "{}",
            c.image
        );
        let scores: Vec<f32> = serde_json::from_value(res["scores"].clone()).unwrap();
        assert!(
            max_abs_err(&scores, &c.top_scores) < 1e-5,
            "{}: {scores:?}",
            c.image
        );
    }

    // Captioning with the default datastore: the prompt is the top 4, and the caption is the one
    // the library gives for those captions.
    let lib = captioner();
    for c in cases.iter().take(3) {
        let bytes = image_bytes(&c.image);
        let name = file_name(&c.image);
        let r = http::post_multipart(
            &url(&server, "/v1/captions"),
            &[Part::File {
                name: "image",
                filename: &name,
                bytes: &bytes,
            }],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["datastore"], "coco");
        assert_eq!(v["k"], 4);
        assert_eq!(
            v["retrieved_captions"],
            serde_json::json!(c.top_captions[..4])
        );
        assert_eq!(v["retrieved_ids"], serde_json::json!(c.top_ids[..4]));
        let scores: Vec<f32> = serde_json::from_value(v["retrieval_scores"].clone()).unwrap();
        assert!(max_abs_err(&scores, &c.top_scores[..4]) < 1e-5);
        let px = lib.decode_image(&bytes, &name).unwrap();
        let item = lib
            .prepare(px, Retrieval::Captions(c.top_captions[..4].to_vec()), 4)
            .unwrap();
        let want = lib.caption(&[item], &lib.default_generation()).unwrap();
        assert_eq!(v["caption"], want[0].caption.as_str());
    }

    // The same image with the other datastore: its best rows by inner product (computed here
    // from the fixture's embeddings), with ids local to that store.
    let tensors = candle_core::safetensors::load(
        fixture("retrieval/expected_tensors.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let emb = caption_embeddings();
    let caps = datastore_captions();
    let c = &cases[0];
    let q: Vec<f32> = tensors[&format!("{}.query_embedding", file_name(&c.image))]
        .to_vec1()
        .unwrap();
    let mut dots: Vec<(usize, f32)> = (0..100)
        .map(|j| (j, (0..32).map(|d| q[d] * emb[(100 + j) * 32 + d]).sum()))
        .collect();
    dots.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let r = http::post(
        &url(&server, "/v1/captions?datastore=rows100&k=3&beams=1"),
        "image/jpeg",
        &image_bytes(&c.image),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["datastore"], "rows100");
    let want_ids: Vec<u64> = dots[..3].iter().map(|d| d.0 as u64).collect();
    assert_eq!(v["retrieved_ids"], serde_json::json!(want_ids));
    let want_caps: Vec<&str> = dots[..3].iter().map(|d| caps[100 + d.0].as_str()).collect();
    assert_eq!(v["retrieved_captions"], serde_json::json!(want_caps));
    assert_ne!(
        v["retrieved_captions"],
        serde_json::json!(c.top_captions[..3])
    );

    // Given captions come before the datastore (which is then unused), and k counts at most
    // the captions there are, as the reference's `retrieved_caps[:k]`.
    let r = http::post(
        &url(
            &server,
            "/v1/captions?datastore=coco&captions=a%20dog&captions=a%20cat&k=4&beams=1&max_new_tokens=2",
        ),
        "image/jpeg",
        &image_bytes(&c.image),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (&v["k"], &v["datastore"]),
        (&serde_json::json!(2), &serde_json::Value::Null)
    );
    assert_eq!(
        v["retrieved_captions"],
        serde_json::json!(["a dog", "a cat"])
    );

    // Text queries: a datastore caption finds itself first with cosine similarity 1.
    let r = http::post_json(
        &url(&server, "/v1/retrieve"),
        &serde_json::json!({"texts": [caps[42], caps[7]], "k": 5}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["datastore"], "coco");
    for (res, id) in v["results"].as_array().unwrap().iter().zip([42u64, 7]) {
        assert_eq!(res["query"], caps[id as usize].as_str());
        let ids: Vec<u64> = serde_json::from_value(res["ids"].clone()).unwrap();
        let scores: Vec<f32> = serde_json::from_value(res["scores"].clone()).unwrap();
        // Ties at 1 (duplicate captions) may put another row first; the query row is among them.
        assert!((scores[0] - 1.0).abs() < 1e-5, "{scores:?}");
        assert!(ids
            .iter()
            .zip(&scores)
            .any(|(i, s)| *i == id && (s - 1.0).abs() < 1e-5));
        assert!(scores.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(ids.len(), 5);
    }
    server.shutdown().unwrap();
}

/// A PNG header (signature and IHDR with a valid CRC) claiming `w`×`h` RGB pixels, and a few
/// bytes of IDAT: what a decompression bomb looks like before it is inflated.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x63, 0x60, 0x18, 0x05]);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn bad_input_gets_a_json_4xx_and_the_server_keeps_serving() {
    let s = stores();
    let config = ServerConfig {
        max_body_bytes: 4 << 20,
        ..ServerConfig::default()
    };
    let server = start(config, Some(s.retriever()));
    let cap = url(&server, "/v1/captions");
    let jpg = image_bytes("images/synth_0_640x480_RGB.jpg");
    let post_img = |q: &str, bytes: &[u8]| http::post(&format!("{cap}{q}"), "image/jpeg", bytes);
    let expect = |r: http::Resp, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.error_code(), code);
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
    };

    // Not an image; a truncated image; an image whose header claims 400 megapixels.
    expect(post_img("", b"GIF? no, plain text"), 415, "not_an_image");
    let r = post_img("", b"hello, this is text");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a supported image format"));
    expect(post_img("", &jpg[..jpg.len() / 3]), 400, "invalid_image");
    let png = image_bytes("images/synth_1_480x640_RGB.png");
    expect(post_img("", &png[..png.len() / 2]), 400, "invalid_image");
    let t = Instant::now();
    expect(
        post_img("", &png_claiming(20_000, 20_000)),
        413,
        "image_too_large",
    );
    assert!(t.elapsed() < Duration::from_secs(5), "the bomb was decoded");
    expect(post_img("", b""), 415, "not_an_image");

    // A 2 GB body is refused from its Content-Length, before it is read.
    let t = Instant::now();
    let head = format!(
        "POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        2u64 << 30
    );
    let (status, text) = http::raw(server.addr(), &head, &jpg[..1000], Duration::from_secs(10));
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("\"body_too_large\""), "{text}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // A chunked body (no Content-Length) over the limit is cut off at the limit.
    let mut chunked = Vec::new();
    for _ in 0..5 {
        chunked.extend_from_slice(format!("{:x}\r\n", 1 << 20).as_bytes());
        chunked.extend(std::iter::repeat_n(b'x', 1 << 20));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = "POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (status, text) = http::raw(server.addr(), head, &chunked, Duration::from_secs(10));
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("\"body_too_large\""), "{text}");
    // The same in a multipart form.
    let big = vec![0u8; 5 << 20];
    let (ct, body) = http::multipart(&[Part::File {
        name: "image",
        filename: "big.jpg",
        bytes: &big,
    }]);
    let head = format!("POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, text) = http::raw(server.addr(), &head, &chunked, Duration::from_secs(10));
    assert_eq!(status, 413, "{text}");

    // Parameters.
    expect(
        post_img("?datastore=flickr", &jpg),
        400,
        "unknown_datastore",
    );
    let r = post_img("?datastore=flickr", &jpg);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("coco, rows100"));
    expect(post_img("?k=0", &jpg), 400, "parameter_out_of_range");
    expect(post_img("?k=33", &jpg), 400, "parameter_out_of_range");
    expect(
        post_img("?k=1000&datastore=rows100", &jpg),
        400,
        "parameter_out_of_range",
    );
    expect(post_img("?k=-1", &jpg), 400, "invalid_parameter");
    expect(post_img("?k=four", &jpg), 400, "invalid_parameter");
    expect(post_img("?beams=0", &jpg), 400, "parameter_out_of_range");
    expect(
        post_img("?max_new_tokens=100000", &jpg),
        400,
        "parameter_out_of_range",
    );
    expect(
        post_img("?captions=a%20dog&k=33", &jpg),
        400,
        "parameter_out_of_range",
    );
    // A parameter given twice (query string and form) must be valid both times.
    expect(
        http::post_multipart(
            &format!("{cap}?beams=0"),
            &[
                Part::File {
                    name: "image",
                    filename: "a.jpg",
                    bytes: &jpg,
                },
                Part::Field {
                    name: "beams",
                    value: "1",
                },
            ],
        ),
        400,
        "parameter_out_of_range",
    );
    expect(post_img("?datastore=", &jpg), 400, "unknown_datastore");
    expect(post_img("?early_stopping=", &jpg), 400, "invalid_parameter");
    expect(
        post_img("?no_retrieval=yes", &jpg),
        400,
        "invalid_parameter",
    );
    expect(
        post_img("?no_retrieval=maybe", &jpg),
        400,
        "invalid_parameter",
    );
    // An unused parameter is still checked.
    expect(
        post_img("?no_retrieval=true&datastore=flickr", &jpg),
        400,
        "unknown_datastore",
    );
    expect(
        post_img("?no_retrieval=true&k=33", &jpg),
        400,
        "parameter_out_of_range",
    );
    expect(post_img("?temperature=2", &jpg), 400, "invalid_parameter");
    expect(
        http::post(&cap, "text/plain", b"a picture"),
        415,
        "unsupported_media_type",
    );
    expect(
        http::post_multipart(
            &cap,
            &[Part::Field {
                name: "k",
                value: "4",
            }],
        ),
        400,
        "missing_image",
    );
    expect(
        http::post_multipart(
            &cap,
            &[
                Part::File {
                    name: "image",
                    filename: "a.jpg",
                    bytes: &jpg,
                },
                Part::File {
                    name: "image",
                    filename: "b.jpg",
                    bytes: &jpg,
                },
            ],
        ),
        400,
        "too_many_images",
    );
    expect(
        http::post(
            &cap,
            "multipart/form-data; boundary=xyz",
            b"--xyz\r\nbroken",
        ),
        400,
        "invalid_multipart",
    );
    expect(
        http::post_json(
            &url(&server, "/v1/retrieve"),
            &serde_json::json!({"texts": "not a list"}),
        ),
        400,
        "invalid_parameter",
    );
    expect(
        http::post(
            &url(&server, "/v1/retrieve"),
            "application/json",
            b"{not json",
        ),
        400,
        "invalid_json",
    );
    expect(
        http::post_json(&url(&server, "/v1/retrieve"), &serde_json::json!({"k": 3})),
        400,
        "missing_query",
    );
    expect(
        http::post_json(
            &url(&server, "/v1/retrieve"),
            &serde_json::json!({"text": "a dog", "texts": ["a cat"]}),
        ),
        400,
        "invalid_parameter",
    );
    expect(
        http::post_json(
            &url(&server, "/v1/retrieve"),
            &serde_json::json!({"text": "a dog", "datastore": "flickr"}),
        ),
        400,
        "unknown_datastore",
    );
    // In a batch, the bad image is named.
    let r = http::post_multipart(
        &url(&server, "/v1/captions/batch"),
        &[
            Part::File {
                name: "image",
                filename: "good.jpg",
                bytes: &jpg,
            },
            Part::File {
                name: "image",
                filename: "bad.jpg",
                bytes: &jpg[..500],
            },
            Part::Field {
                name: "no_retrieval",
                value: "true",
            },
        ],
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad.jpg"),
        "{}",
        r.text()
    );

    // A client that disconnects mid-upload.
    for _ in 0..3 {
        let mut c = std::net::TcpStream::connect(server.addr()).unwrap();
        use std::io::Write;
        c.write_all(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
            .unwrap();
        c.write_all(&jpg[..2000]).unwrap();
        drop(c);
    }

    // Still serving: the right caption for a good request, and every error was counted.
    let case = no_retrieval_case();
    let r = http::post(
        &format!("{cap}?no_retrieval=true&beams=1"),
        "image/jpeg",
        &image_bytes(&case.image),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["caption"],
        case.expected["greedy"].caption.as_str()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = http::get(&url(&server, "/metrics")).text();
        let aborted = m
            .lines()
            .find_map(|l| l.strip_prefix("smallcap_request_errors_total{route=\"/v1/captions\",code=\"body_read_failed\"} "))
            .map(|n| n.parse::<u64>().unwrap())
            .unwrap_or(0);
        if aborted == 3 {
            assert!(m.contains("code=\"not_an_image\"} 3"), "{m}");
            assert!(m.contains("smallcap_requests_in_flight 1"), "{m}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the aborted uploads were not counted:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.shutdown().unwrap();
}

#[test]
fn server_pixel_limit_is_checked_before_decoding() {
    let config = ServerConfig {
        max_image_pixels: 100_000,
        ..ServerConfig::default()
    };
    let server = start(config, None);
    let r = http::post(
        &url(&server, "/v1/captions?no_retrieval=true"),
        "image/jpeg",
        &image_bytes("images/synth_0_640x480_RGB.jpg"),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "image_too_large")
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("640x480"));
    let r = http::post(
        &url(&server, "/v1/captions?no_retrieval=true"),
        "image/png",
        &image_bytes("images/synth_5_97x203_RGBA.png"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    server.shutdown().unwrap();
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn queue_depth(server_addr: std::net::SocketAddr) -> u64 {
    let m = http::get(&format!("http://{server_addr}/metrics")).text();
    m.lines()
        .find_map(|l| l.strip_prefix("smallcap_queue_depth "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_full_queue_answers_503_with_retry_after_then_recovers() {
    let s = stores();
    let config = ServerConfig {
        queue_capacity: 2,
        max_batch: 1,
        batch_wait: Duration::ZERO,
        ..ServerConfig::default()
    };
    let server = start(config, Some(s.retriever()));
    let addr = server.addr();
    let case = image_cases()[0].clone();
    // The worker takes the first request and is held in retrieval; two more fill the queue.
    s.gate.close();
    let send = move || {
        let case = case.clone();
        std::thread::spawn(move || {
            http::post(
                &format!("http://{addr}/v1/captions?beams=1"),
                "image/jpeg",
                &image_bytes(&case.image),
            )
        })
    };
    let first = send();
    wait_until("the worker holds a request", || s.gate.waiting() == 1);
    let queued: Vec<_> = (0..2).map(|_| send()).collect();
    wait_until("two requests wait in the queue", || queue_depth(addr) == 2);
    let r = http::post(
        &format!("http://{addr}/v1/captions?no_retrieval=true"),
        "image/jpeg",
        &image_bytes("images/synth_0_640x480_RGB.jpg"),
    );
    assert_eq!((r.status, r.error_code().as_str()), (503, "queue_full"));
    assert_eq!(r.header("retry-after"), Some("1"));
    s.gate.open();
    for h in std::iter::once(first).chain(queued) {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let m = http::get(&format!("http://{addr}/metrics")).text();
    assert!(m.contains("smallcap_queue_rejected_total 1"), "{m}");
    assert!(
        m.contains("smallcap_request_errors_total{route=\"/v1/captions\",code=\"queue_full\"} 1")
    );
    server.shutdown().unwrap();
}

#[test]
fn a_request_past_its_timeout_gets_504_and_the_worker_skips_it() {
    let s = stores();
    let config = ServerConfig {
        request_timeout: Duration::from_millis(500),
        max_batch: 1,
        ..ServerConfig::default()
    };
    let server = start(config, Some(s.retriever()));
    let addr = server.addr();
    s.gate.close();
    let img = image_bytes(&image_cases()[0].image);
    let held = {
        let img = img.clone();
        std::thread::spawn(move || {
            http::post(&format!("http://{addr}/v1/captions"), "image/jpeg", &img)
        })
    };
    wait_until("the worker holds a request", || s.gate.waiting() == 1);
    let r = http::post(
        &format!("http://{addr}/v1/captions?no_retrieval=true"),
        "image/jpeg",
        &img,
    );
    assert_eq!((r.status, r.error_code().as_str()), (504, "timeout"));
    let r = held.join().unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (504, "timeout"));
    s.gate.open();
    // The timed-out jobs are dropped, not captioned; new requests are served.
    let r = http::post(
        &format!("http://{addr}/v1/captions?no_retrieval=true"),
        "image/jpeg",
        &img,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    server.shutdown().unwrap();
}

#[test]
fn shutdown_finishes_accepted_requests_then_refuses_connections() {
    let s = stores();
    let server = start(ServerConfig::default(), Some(s.retriever()));
    let addr = server.addr();
    let case = image_cases()[1].clone();
    s.gate.close();
    let held = {
        let img = image_bytes(&case.image);
        std::thread::spawn(move || {
            http::post(&format!("http://{addr}/v1/captions?k=2"), "image/png", &img)
        })
    };
    wait_until("the worker holds a request", || s.gate.waiting() == 1);
    let stopping = std::thread::spawn(move || server.shutdown());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !stopping.is_finished(),
        "shutdown did not wait for the accepted request"
    );
    s.gate.open();
    let r = held.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["retrieved_captions"],
        serde_json::json!(case.top_captions[..2])
    );
    stopping.join().unwrap().unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn not_ready_until_the_models_are_loaded() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let server = Server::start(listener, ServerConfig::default(), move || {
        go_rx.recv().unwrap();
        Ok(Pipeline::new(captioner(), None))
    })
    .unwrap();
    let r = http::get(&url(&server, "/healthz"));
    assert_eq!(r.status, 200);
    let r = http::get(&url(&server, "/readyz"));
    assert_eq!((r.status, r.error_code().as_str()), (503, "not_ready"));
    assert!(r.header("retry-after").is_some());
    let r = http::post(
        &url(&server, "/v1/captions?no_retrieval=true"),
        "image/jpeg",
        &image_bytes("images/synth_0_640x480_RGB.jpg"),
    );
    assert_eq!((r.status, r.error_code().as_str()), (503, "not_ready"));
    go_tx.send(()).unwrap();
    server.wait_ready().unwrap();
    assert_eq!(http::get(&url(&server, "/readyz")).status, 200);
    server.shutdown().unwrap();
}

#[test]
fn a_model_that_cannot_load_is_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = Server::start(listener, ServerConfig::default(), || {
        let captioner = Captioner::from_specs("/no/such/model/dir", None, &Device::Cpu)?;
        Ok(Pipeline::new(captioner, None))
    })
    .unwrap();
    let e = server.wait_ready().unwrap_err().to_string();
    assert!(e.contains("/no/such/model/dir"), "{e}");
    server.shutdown().unwrap();
}

#[test]
fn serve_command_serves_logs_one_line_per_request_and_stops_on_sigterm() {
    let args: Vec<std::ffi::OsString> = vec![
        "--model".into(),
        fixture("model").into(),
        "--tokenizer".into(),
        fixture("tokenizer").into(),
    ];
    let (mut child, addr, lines) = spawn_serve(&args);
    let case = no_retrieval_case();
    let r = http::post(
        &format!("http://{addr}/v1/captions?no_retrieval=true&beams=1"),
        "image/jpeg",
        &image_bytes(&case.image),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["caption"],
        case.expected["greedy"].caption.as_str()
    );
    let id = r.header("x-request-id").unwrap().to_string();
    let bad = http::post(
        &format!("http://{addr}/v1/captions?no_retrieval=true"),
        "image/jpeg",
        b"x",
    );
    assert_eq!(bad.status, 415);

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.0.wait().unwrap().success(), "{rest:?}");
    let line = rest
        .iter()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no log line for request {id}: {rest:?}"));
    for needle in [
        "route=\"/v1/captions\"",
        "status=200",
        "method=POST",
        "total_ms=",
        "queue=",
        "caption=",
    ] {
        assert!(line.contains(needle), "{needle} not in {line}");
    }
    assert!(
        rest.iter()
            .any(|l| l.contains("status=415") && l.contains("not_an_image")),
        "{rest:?}"
    );
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
}

#[test]
fn serve_command_retrieves_live_with_the_real_retrieval_encoder() {
    let s = stores();
    // A folder that is not a datastore is named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smallcap"))
        .args(["serve", "--model"])
        .arg(fixture("model"))
        .arg("--datastore")
        .arg(fixture("retrieval"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retrieval/manifest.json"), "{err}");

    // A real one, with the fixture's OpenAI CLIP as the retrieval encoder (the store records it:
    // the stores of the test double record a stand-in, which the server refuses for this
    // encoder): image queries get the reference's FAISS top 8.
    let imported = s.dir().join("imported");
    import_fixture_store(&imported);
    let args: Vec<std::ffi::OsString> = vec![
        "--model".into(),
        fixture("model").into(),
        "--tokenizer".into(),
        fixture("tokenizer").into(),
        "--datastore".into(),
        format!("coco={}", imported.display()).into(),
        "--retrieval-encoder".into(),
        fixture("retrieval/clip_resnet.pt").into(),
    ];
    let (_child, addr, _lines) = spawn_serve(&args);
    for c in image_cases().iter().take(4) {
        let r = http::post(
            &format!("http://{addr}/v1/retrieve?k=8&datastore=coco"),
            "image/png",
            &image_bytes(&c.image),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(
            v["results"][0]["ids"],
            serde_json::json!(c.top_ids),
            "{}",
            c.image
        );
    }
}

#[test]
fn api_keys_guard_the_api_and_cors_answers_only_named_origins() {
    use smallcap::server::access::AccessPolicy;
    let keyed = |protect_metrics: bool, origins: Vec<String>| ServerConfig {
        access: AccessPolicy::new(&["k-one".into(), "k-two".into()], protect_metrics, origins)
            .unwrap(),
        ..ServerConfig::default()
    };
    let server = start(keyed(false, vec!["https://app.example".into()]), None);
    let get = |path: &str, headers: &[(&str, &str)]| {
        http::request("GET", &url(&server, path), headers, None)
    };
    // The API: no key, a wrong one, a right one.
    let r = get("/v1/datastores", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.error_code(), "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let r = get("/v1/datastores", &[("Authorization", "Bearer k-on")]);
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    let r = get("/v1/datastores", &[("Authorization", "Basic k-one")]);
    assert_eq!(r.status, 401);
    let r = get("/v1/datastores", &[("Authorization", "Bearer k-two")]);
    assert_eq!(r.status, 200, "{}", r.text());
    // A captioning request with the key is served; without, refused before the body is read
    // (a small body, so that the client is not still sending when the answer comes).
    let img = image_bytes(&retrieval_cases()[0].image);
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        http::request(
            "POST",
            &url(&server, "/v1/captions?no_retrieval=true"),
            headers,
            Some(body),
        )
    };
    let ct = ("Content-Type", "application/octet-stream");
    assert_eq!(post(&[ct], b"x").status, 401);
    let r = post(&[ct, ("Authorization", "Bearer k-one")], &img);
    assert_eq!(r.status, 200, "{}", r.text());
    // Probes, metrics, the page and the schema stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/", "/openapi.json"] {
        assert_eq!(get(path, &[]).status, 200, "{path}");
    }
    // The schema says so: a key on every /v1 operation, none elsewhere (metrics are open here).
    let doc = get("/openapi.json", &[]).json();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for op in ops.as_object().unwrap().values() {
            let want = path
                .starts_with("/v1/")
                .then(|| serde_json::json!([{"bearerAuth": []}]));
            assert_eq!(op.get("security"), want.as_ref(), "{path}");
        }
    }
    // CORS: the named origin gets its headers (preflight included, without a key); others none.
    let r = get(
        "/v1/datastores",
        &[
            ("Authorization", "Bearer k-one"),
            ("Origin", "https://app.example"),
        ],
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let r = get(
        "/v1/datastores",
        &[
            ("Authorization", "Bearer k-one"),
            ("Origin", "https://evil.example"),
        ],
    );
    assert_eq!(r.header("access-control-allow-origin"), None);
    let preflight = |server: &Server, origin: &str| {
        http::request(
            "OPTIONS",
            &url(server, "/v1/captions"),
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization"),
            ],
            None,
        )
    };
    let r = preflight(&server, "https://app.example");
    assert_eq!(r.status, 204);
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    assert_ne!(preflight(&server, "https://evil.example").status, 204);
    server.shutdown().unwrap();

    // /metrics behind the key when asked; no CORS at all by default.
    let server = start(keyed(true, vec![]), None);
    let m = |headers: &[(&str, &str)]| {
        http::request("GET", &url(&server, "/metrics"), headers, None).status
    };
    assert_eq!(m(&[]), 401);
    assert_eq!(m(&[("Authorization", "Bearer k-one")]), 200);
    let r = http::request(
        "GET",
        &url(&server, "/healthz"),
        &[("Origin", "https://app.example")],
        None,
    );
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_ne!(preflight(&server, "https://app.example").status, 204);
    server.shutdown().unwrap();
}

#[test]
fn serve_takes_api_keys_from_flags_the_environment_and_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("keys.txt");
    std::fs::write(&file, "# one key per line\nfile-key\n").unwrap();
    let mut args: Vec<std::ffi::OsString> = vec![
        "--model".into(),
        fixture("model").into(),
        "--tokenizer".into(),
        fixture("tokenizer").into(),
        "--api-key".into(),
        "flag-key".into(),
        "--api-key-file".into(),
        file.clone().into(),
    ];
    let (_child, addr, _lines) =
        common::serve_cli::spawn_serve_with_env(&args, &[("SMALLCAP_API_KEY", "env-key")]);
    let status = |key: Option<&str>| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http::request(
            "GET",
            &format!("http://{addr}/v1/datastores"),
            &headers,
            None,
        )
        .status
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("other")), 401);
    for key in ["flag-key", "env-key", "file-key"] {
        assert_eq!(status(Some(key)), 200, "{key}");
    }
    // A key file without keys, and --protect-metrics without any key, are refused.
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    let refused = |extra: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_smallcap"))
            .env_remove("SMALLCAP_API_KEY")
            .args(["serve", "--model"])
            .arg(fixture("model"))
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = refused(&["--api-key-file".as_ref(), empty.as_os_str()]);
    assert!(e.contains("no key in the file"), "{e}");
    let e = refused(&["--protect-metrics".as_ref()]);
    assert!(e.contains("needs an API key"), "{e}");
    // Listening beyond loopback without a key warns.
    args.truncate(4);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smallcap"))
        .env_remove("SMALLCAP_API_KEY")
        .arg("serve")
        .args(&args)
        .args(["--addr", "0.0.0.0:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let first = std::io::BufReader::new(child.stderr.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.contains("warning") && first.contains("without an API key"),
        "{first}"
    );
}
