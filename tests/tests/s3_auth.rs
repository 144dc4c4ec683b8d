//! The gateway's auth matrix: every write handler × (no auth, unknown key,
//! forged signature, expired presigned URL, tampered payload hash) is 403
//! and changes nothing; a tampered body is refused and changes nothing;
//! anonymous reads work on a public bucket only. Requests are signed by the
//! harness's own SigV4 signer (validated here by correctly signed requests
//! that succeed).

use std::time::Duration;
use std::time::SystemTime;

use aws_sdk_s3::primitives::ByteStream;

use cairn_tests::sigv4::sha256_hex;
use cairn_tests::sigv4::Request;
use cairn_tests::Cluster;
use cairn_tests::S3Gateway;
use cairn_tests::Spec;

/// Everything a write could change, as S3 and the namespace see it.
async fn snapshot(
    s3: &aws_sdk_s3::Client,
    cluster: &Cluster,
    upload: &str,
) -> anyhow::Result<String> {
    let mut out = String::new();
    for b in s3.list_buckets().send().await?.buckets() {
        let name = b.name().unwrap_or_default();
        out.push_str(&format!("bucket {name}\n"));
        let objects = s3.list_objects_v2().bucket(name).send().await?;
        for o in objects.contents() {
            out.push_str(&format!(
                "  {} {:?} {:?}\n",
                o.key().unwrap_or_default(),
                o.size(),
                o.e_tag()
            ));
        }
        for u in s3
            .list_multipart_uploads()
            .bucket(name)
            .send()
            .await?
            .uploads()
        {
            out.push_str(&format!("  upload {:?} {:?}\n", u.key(), u.upload_id()));
        }
    }
    let parts = s3
        .list_parts()
        .bucket("priv")
        .key("up")
        .upload_id(upload)
        .send()
        .await?;
    for p in parts.parts() {
        out.push_str(&format!("part {:?} {:?}\n", p.part_number(), p.e_tag()));
    }
    let stats = cairn_tests::check_tree(&cluster.client().meta).await?;
    out.push_str(&format!("tree {} dirs {} files\n", stats.dirs, stats.files));
    Ok(out)
}

#[tokio::test]
async fn s3_refuses_every_unauthenticated_write_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let gw = S3Gateway::start(&cluster, "s3", "public_buckets = [\"pub\"]").await?;
    let s3 = gw.sdk();
    for b in ["priv", "pub"] {
        s3.create_bucket().bucket(b).send().await?;
    }
    s3.put_object()
        .bucket("priv")
        .key("existing")
        .body(ByteStream::from_static(b"keep me"))
        .send()
        .await?;
    s3.put_object()
        .bucket("pub")
        .key("readme")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await?;
    let up = s3
        .create_multipart_upload()
        .bucket("priv")
        .key("up")
        .send()
        .await?;
    let id = up.upload_id().unwrap_or_default().to_owned();
    let part = s3
        .upload_part()
        .bucket("priv")
        .key("up")
        .upload_id(&id)
        .part_number(1)
        .body(ByteStream::from_static(b"part"))
        .send()
        .await?;
    let etag = part.e_tag().unwrap_or_default().to_owned();
    let before = snapshot(&s3, &cluster, &id).await?;

    let host = gw.addr.as_str();
    let complete = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
    );
    let handlers: Vec<(&str, Request)> = vec![
        (
            "PutObject",
            Request::new("PUT", host, "/priv/new", b"data".to_vec()),
        ),
        (
            "PutObject (public bucket)",
            Request::new("PUT", host, "/pub/new", b"data".to_vec()),
        ),
        (
            "CopyObject",
            Request::new("PUT", host, "/priv/copy", Vec::new())
                .header("x-amz-copy-source", "/priv/existing"),
        ),
        (
            "DeleteObject",
            Request::new("DELETE", host, "/priv/existing", Vec::new()),
        ),
        (
            "DeleteObject (public bucket)",
            Request::new("DELETE", host, "/pub/readme", Vec::new()),
        ),
        (
            "DeleteObjects",
            Request::new(
                "POST",
                host,
                "/priv",
                b"<Delete><Object><Key>existing</Key></Object></Delete>".to_vec(),
            )
            .query("delete", ""),
        ),
        (
            "CreateBucket",
            Request::new("PUT", host, "/newbucket", Vec::new()),
        ),
        (
            "DeleteBucket",
            Request::new("DELETE", host, "/pub", Vec::new()),
        ),
        (
            "CreateMultipartUpload",
            Request::new("POST", host, "/priv/mp", Vec::new()).query("uploads", ""),
        ),
        (
            "UploadPart",
            Request::new("PUT", host, "/priv/up", b"other".to_vec())
                .query("partNumber", "2")
                .query("uploadId", &id),
        ),
        (
            "UploadPartCopy",
            Request::new("PUT", host, "/priv/up", Vec::new())
                .query("partNumber", "3")
                .query("uploadId", &id)
                .header("x-amz-copy-source", "/priv/existing"),
        ),
        (
            "CompleteMultipartUpload",
            Request::new("POST", host, "/priv/up", complete.into_bytes()).query("uploadId", &id),
        ),
        (
            "AbortMultipartUpload",
            Request::new("DELETE", host, "/priv/up", Vec::new()).query("uploadId", &id),
        ),
    ];
    let (key, secret) = (gw.access_key.as_str(), gw.secret_key.as_str());
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let mut checked = 0;
    for (name, base) in &handlers {
        let variants: Vec<(&str, Request)> = vec![
            ("no auth", base.clone()),
            (
                "unknown key",
                base.clone().signed("AKIDNOSUCHKEY0000000", secret),
            ),
            (
                "forged signature",
                base.clone().signed(key, "not-the-secret-key-at-all"),
            ),
            (
                "expired presigned URL",
                base.clone().presigned(key, secret, an_hour_ago, 60),
            ),
            ("tampered payload hash", {
                let mut r = base.clone().signed(key, secret);
                let other = b"tampered body".to_vec();
                for h in &mut r.headers {
                    if h.0 == "x-amz-content-sha256" {
                        h.1 = sha256_hex(&other);
                    }
                }
                r.body = other;
                r
            }),
        ];
        for (how, req) in variants {
            let (status, body) = req.send().await?;
            assert_eq!(status, 403, "{name} with {how}: {body}");
            checked += 1;
        }
    }
    assert_eq!(checked, handlers.len() * 5);
    // A body that does not match its signed hash: refused, nothing stored.
    let mut r =
        Request::new("PUT", host, "/priv/body", b"the signed body".to_vec()).signed(key, secret);
    r.body = b"another body!!!".to_vec();
    let (status, body) = r.send().await?;
    assert!(
        (400..500).contains(&status),
        "tampered body answered {status}: {body}"
    );
    assert_eq!(
        snapshot(&s3, &cluster, &id).await?,
        before,
        "a refused request changed something"
    );

    // The signer is right: the same requests correctly signed succeed.
    let (status, body) = Request::new("PUT", host, "/priv/signed", b"ok".to_vec())
        .signed(key, secret)
        .send()
        .await?;
    assert_eq!(status, 200, "{body}");
    let fresh = Request::new("GET", host, "/priv/signed", Vec::new()).presigned(
        key,
        secret,
        SystemTime::now(),
        60,
    );
    assert_eq!(fresh.send().await?, (200, "ok".to_owned()));
    let (status, body) = Request::new("DELETE", host, "/priv/signed", Vec::new())
        .signed(key, secret)
        .send()
        .await?;
    assert_eq!(status, 204, "{body}");

    // Anonymous reads: public bucket only.
    assert_eq!(
        Request::new("GET", host, "/pub/readme", Vec::new())
            .send()
            .await?,
        (200, "hello".to_owned())
    );
    assert_eq!(
        Request::new("GET", host, "/pub", Vec::new())
            .send()
            .await?
            .0,
        200
    );
    assert_eq!(
        Request::new("GET", host, "/priv/existing", Vec::new())
            .send()
            .await?
            .0,
        403
    );
    assert_eq!(
        Request::new("GET", host, "/priv", Vec::new())
            .send()
            .await?
            .0,
        403
    );
    assert_eq!(
        Request::new("GET", host, "/", Vec::new()).send().await?.0,
        403
    );
    assert_eq!(snapshot(&s3, &cluster, &id).await?, before);
    Ok(())
}

#[tokio::test]
async fn s3_request_limits_are_enforced() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let limits = "max_object_bytes = 1024\nmax_concurrent_requests = 1\nmax_header_bytes = 8192";
    let gw = S3Gateway::start(&cluster, "s3", limits).await?;
    let (host, key, secret) = (
        gw.addr.as_str(),
        gw.access_key.as_str(),
        gw.secret_key.as_str(),
    );
    let (status, _) = Request::new("PUT", host, "/lim", Vec::new())
        .signed(key, secret)
        .send()
        .await?;
    assert_eq!(status, 200);

    // A body over the limit: by its Content-Length, before anything is stored.
    let (status, body) = Request::new("PUT", host, "/lim/big", vec![7; 2048])
        .signed(key, secret)
        .send()
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("EntityTooLarge"), "{body}");
    // Headers over the limit.
    let huge = "x".repeat(10_000);
    let (status, _) = Request::new("GET", host, "/lim", Vec::new())
        .header("x-padding", &huge)
        .signed(key, secret)
        .send()
        .await?;
    assert_eq!(status, 431);

    // One request in flight (its body not yet sent) takes the only slot: the
    // next is 503 SlowDown; once it finishes, requests are served again.
    let held = Request::new("PUT", host, "/lim/slow", vec![1; 64]).signed(key, secret);
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let mut head = format!("PUT /lim/slow HTTP/1.1\r\nhost: {host}\r\n");
    for (k, v) in &held.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("content-length: 64\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&[1; 32]).await?;
    let metrics = gw.metrics_addr.clone();
    cairn_tests::wait_for(
        "the held request to be in flight",
        Duration::from_secs(10),
        || {
            let metrics = metrics.clone();
            async move {
                let Ok((_, text)) = cairn_tests::http_get(&metrics, "/metrics").await else {
                    return false;
                };
                cairn_tests::parse_metrics(&text)
                    .ok()
                    .and_then(|m| m.get("cairn_s3_requests_in_flight").copied())
                    == Some(1.0)
            }
        },
    )
    .await?;
    let (status, body) = Request::new("GET", host, "/lim", Vec::new())
        .signed(key, secret)
        .send()
        .await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("SlowDown"), "{body}");
    stream.write_all(&[1; 32]).await?;
    let mut answer = Vec::new();
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "connection closed");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    drop(stream);
    let (status, body) = Request::new("GET", host, "/lim/slow", Vec::new())
        .signed(key, secret)
        .send()
        .await?;
    assert_eq!((status, body.len()), (200, 64));
    let (_, listing) = Request::new("GET", host, "/lim", Vec::new())
        .signed(key, secret)
        .send()
        .await?;
    assert!(!listing.contains("big"), "{listing}");
    Ok(())
}

#[tokio::test]
async fn s3_a_forged_chunk_signature_is_403_signature_does_not_match_and_stores_nothing(
) -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let gw = S3Gateway::start(&cluster, "s3", "").await?;
    let s3 = gw.sdk();
    let (host, key, secret) = (
        gw.addr.as_str(),
        gw.access_key.as_str(),
        gw.secret_key.as_str(),
    );
    s3.create_bucket().bucket("chunks").send().await?;
    s3.put_object()
        .bucket("chunks")
        .key("kept")
        .body(ByteStream::from_static(b"old content"))
        .send()
        .await?;
    let data = cairn_tests::random_bytes(300_000, 3);
    // The signer is right: every chunk signed correctly is stored.
    let (status, body) = Request::new("PUT", host, "/chunks/streamed", data.clone())
        .streaming_signed(key, secret, 64 << 10, None)
        .send()
        .await?;
    assert_eq!(status, 200, "{body}");
    let got = s3
        .get_object()
        .bucket("chunks")
        .key("streamed")
        .send()
        .await?;
    assert!(got.body.collect().await?.into_bytes().as_ref() == data.as_slice());
    let up = s3
        .create_multipart_upload()
        .bucket("chunks")
        .key("mp")
        .send()
        .await?;
    let id = up.upload_id().unwrap_or_default().to_owned();
    let before = cairn_tests::check_tree(&cluster.client().meta).await?;

    // A forged first chunk, a forged chunk after good ones (bytes already
    // written), a forged final empty chunk; on a new key and an existing one.
    for forge in [0, 2, 5] {
        for path in ["/chunks/new", "/chunks/kept"] {
            let (status, body) = Request::new("PUT", host, path, data.clone())
                .streaming_signed(key, secret, 64 << 10, Some(forge))
                .send()
                .await?;
            assert_eq!(status, 403, "chunk {forge} forged on {path}: {body}");
            assert!(
                body.contains("<Code>SignatureDoesNotMatch</Code>"),
                "chunk {forge} forged on {path}: {body}"
            );
        }
    }
    // The same for a part.
    let (status, body) = Request::new("PUT", host, "/chunks/mp", data.clone())
        .query("partNumber", "1")
        .query("uploadId", &id)
        .streaming_signed(key, secret, 64 << 10, Some(1))
        .send()
        .await?;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("<Code>SignatureDoesNotMatch</Code>"),
        "{body}"
    );
    let parts = s3
        .list_parts()
        .bucket("chunks")
        .key("mp")
        .upload_id(&id)
        .send()
        .await?;
    assert!(parts.parts().is_empty());
    let head = s3.head_object().bucket("chunks").key("new").send().await;
    assert!(head.is_err(), "a forged upload was stored");
    let kept = s3.get_object().bucket("chunks").key("kept").send().await?;
    assert_eq!(
        kept.body.collect().await?.into_bytes().as_ref(),
        b"old content"
    );
    let after = cairn_tests::check_tree(&cluster.client().meta).await?;
    assert_eq!(
        (after.dirs, after.files),
        (before.dirs, before.files),
        "a refused upload left something behind"
    );
    Ok(())
}

#[tokio::test]
async fn s3_an_unknown_access_key_is_403_invalid_access_key_id() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let gw = S3Gateway::start(&cluster, "s3", "").await?;
    gw.sdk().create_bucket().bucket("keys").send().await?;
    let stranger = cairn_tests::sdk_client(&gw.endpoint(), "AKIDNOSUCHKEY0000000", &gw.secret_key);
    let code = |e: &dyn aws_sdk_s3::error::ProvideErrorMetadata| e.code().map(str::to_owned);
    let listed = stranger.list_buckets().send().await;
    let e = listed.expect_err("an unknown key listed buckets");
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(403));
    assert_eq!(code(&e).as_deref(), Some("InvalidAccessKeyId"));
    let put = stranger
        .put_object()
        .bucket("keys")
        .key("k")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    let e = put.expect_err("an unknown key wrote");
    assert_eq!(code(&e).as_deref(), Some("InvalidAccessKeyId"));
    // A presigned URL of an unknown key as well.
    let (status, body) = Request::new("GET", &gw.addr, "/keys", Vec::new())
        .presigned(
            "AKIDNOSUCHKEY0000000",
            &gw.secret_key,
            SystemTime::now(),
            60,
        )
        .send()
        .await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("<Code>InvalidAccessKeyId</Code>"), "{body}");
    let listed = gw.sdk().list_objects_v2().bucket("keys").send().await?;
    assert_eq!(listed.key_count(), Some(0));
    Ok(())
}
