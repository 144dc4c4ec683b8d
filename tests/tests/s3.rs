//! The S3 gateway through a real S3 client (aws-sdk-s3) against a `cairn s3`
//! process in front of a multi-process cluster: every operation, listing
//! with delimiters and pagination, multipart, ranges, presigned URLs,
//! conditional requests, and the same data through the client library.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::CompletedMultipartUpload;
use aws_sdk_s3::types::CompletedPart;
use aws_sdk_s3::types::Delete;
use aws_sdk_s3::types::MetadataDirective;
use aws_sdk_s3::types::ObjectIdentifier;
use futures::stream::StreamExt;
use futures::stream::TryStreamExt;

use cairn_tests::random_bytes;
use cairn_tests::Cluster;
use cairn_tests::S3Gateway;
use cairn_tests::Spec;

const READY: Duration = Duration::from_secs(60);

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    format!("{:x}", md5::Md5::digest(data))
}

async fn get_bytes(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
    let out = s3.get_object().bucket(bucket).key(key).send().await?;
    Ok(out.body.collect().await?.into_bytes().to_vec())
}

async fn put(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    data: &[u8],
) -> anyhow::Result<String> {
    let out = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .with_context(|| format!("PUT {key}"))?;
    Ok(out.e_tag().unwrap_or_default().trim_matches('"').to_owned())
}

/// The S3 error code of a failed call.
fn code<E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug, R>(
    r: Result<R, aws_sdk_s3::error::SdkError<E>>,
) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => {
            if let Some(c) = e.as_service_error().and_then(|s| s.code()) {
                return c.to_owned();
            }
            match e.raw_response() {
                Some(raw) => format!("http {}", raw.status().as_u16()),
                None => format!("{e:?}"),
            }
        }
    }
}

async fn keys_v2(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    page: i32,
) -> anyhow::Result<(Vec<String>, Vec<String>, usize)> {
    let mut keys = Vec::new();
    let mut prefixes = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let out = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_owned))
            .max_keys(page)
            .set_continuation_token(token.clone())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "listing {prefix:?} after {token:?}: {}",
                    code::<_, ()>(Err(e))
                )
            })?;
        pages += 1;
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        prefixes.extend(
            out.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_owned)),
        );
        if out.is_truncated() != Some(true) {
            return Ok((keys, prefixes, pages));
        }
        token = out.next_continuation_token().map(str::to_owned);
        anyhow::ensure!(token.is_some(), "truncated listing without a token");
    }
}

#[tokio::test]
async fn s3_operations_against_a_real_gateway() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(READY).await?;
    let gw = S3Gateway::start(&cluster, "s3", "").await?;
    let s3 = gw.sdk();

    // Buckets.
    s3.create_bucket().bucket("data").send().await?;
    assert_eq!(
        code(s3.create_bucket().bucket("data").send().await),
        "BucketAlreadyOwnedByYou"
    );
    assert_eq!(
        code(s3.create_bucket().bucket("Bad_Name").send().await),
        "InvalidBucketName"
    );
    s3.head_bucket().bucket("data").send().await?;
    s3.get_bucket_location().bucket("data").send().await?;
    assert_eq!(
        code(s3.head_bucket().bucket("nope").send().await),
        "NotFound"
    );
    let buckets = s3.list_buckets().send().await?;
    let names: Vec<&str> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["data"]);

    // PUT / GET / HEAD with metadata; the ETag is the body's MD5.
    let body = random_bytes(10 << 20, 1);
    let out = s3
        .put_object()
        .bucket("data")
        .key("dir/sub/big.bin")
        .content_type("application/x-test")
        .metadata("owner", "ada")
        .body(ByteStream::from(body.clone()))
        .send()
        .await?;
    assert_eq!(out.e_tag().unwrap().trim_matches('"'), md5_hex(&body));
    let head = s3
        .head_object()
        .bucket("data")
        .key("dir/sub/big.bin")
        .send()
        .await?;
    assert_eq!(head.content_length(), Some(body.len() as i64));
    assert_eq!(head.content_type(), Some("application/x-test"));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("owner"))
            .map(String::as_str),
        Some("ada")
    );
    assert_eq!(get_bytes(&s3, "data", "dir/sub/big.bin").await?, body);
    assert_eq!(
        code(s3.get_object().bucket("data").key("dir/none").send().await),
        "NoSuchKey"
    );
    assert_eq!(
        code(s3.get_object().bucket("nope").key("x").send().await),
        "NoSuchBucket"
    );

    // Ranged GETs crossing 4 MiB block boundaries, and a suffix range.
    for (a, b) in [
        (0u64, 0u64),
        ((4 << 20) - 7, (8 << 20) + 9),
        (1, (10 << 20) - 1),
    ] {
        let out = s3
            .get_object()
            .bucket("data")
            .key("dir/sub/big.bin")
            .range(format!("bytes={a}-{b}"))
            .send()
            .await?;
        assert_eq!(
            out.content_range(),
            Some(format!("bytes {a}-{b}/{}", body.len()).as_str())
        );
        let got = out.body.collect().await?.into_bytes();
        assert_eq!(&got[..], &body[a as usize..=b as usize], "range {a}-{b}");
    }
    let tail = s3
        .get_object()
        .bucket("data")
        .key("dir/sub/big.bin")
        .range("bytes=-5")
        .send()
        .await?;
    assert_eq!(
        &tail.body.collect().await?.into_bytes()[..],
        &body[body.len() - 5..]
    );
    assert_eq!(
        code(
            s3.get_object()
                .bucket("data")
                .key("dir/sub/big.bin")
                .range("bytes=99999999-")
                .send()
                .await
        ),
        "InvalidRange"
    );

    // Conditional GETs.
    let etag = head.e_tag().unwrap().to_owned();
    let r = s3
        .get_object()
        .bucket("data")
        .key("dir/sub/big.bin")
        .if_none_match(&etag)
        .send()
        .await;
    assert_eq!(code(r), "http 304");
    let r = s3
        .get_object()
        .bucket("data")
        .key("dir/sub/big.bin")
        .if_match("\"abc\"")
        .send()
        .await;
    assert_eq!(code(r), "PreconditionFailed");
    let future = aws_sdk_s3::primitives::DateTime::from_secs(4_000_000_000);
    let r = s3
        .head_object()
        .bucket("data")
        .key("dir/sub/big.bin")
        .if_modified_since(future)
        .send()
        .await;
    assert_eq!(code(r), "http 304");
    s3.get_object()
        .bucket("data")
        .key("dir/sub/big.bin")
        .if_match(&etag)
        .send()
        .await?;

    // Conditional PUT.
    put(&s3, "data", "once", b"first").await?;
    let r = s3
        .put_object()
        .bucket("data")
        .key("once")
        .if_none_match("*")
        .body(ByteStream::from_static(b"2"))
        .send()
        .await;
    assert_eq!(code(r), "PreconditionFailed");
    assert_eq!(get_bytes(&s3, "data", "once").await?, b"first");

    // Copy: metadata copied by default, replaced with REPLACE.
    let copied = s3
        .copy_object()
        .bucket("data")
        .key("copies/big.bin")
        .copy_source("data/dir/sub/big.bin")
        .send()
        .await?;
    assert_eq!(
        copied.copy_object_result().and_then(|r| r.e_tag()),
        Some(etag.as_str())
    );
    let h = s3
        .head_object()
        .bucket("data")
        .key("copies/big.bin")
        .send()
        .await?;
    assert_eq!(
        h.metadata()
            .and_then(|m| m.get("owner"))
            .map(String::as_str),
        Some("ada")
    );
    s3.copy_object()
        .bucket("data")
        .key("copies/big.bin")
        .copy_source("data/copies/big.bin")
        .metadata_directive(MetadataDirective::Replace)
        .metadata("owner", "grace")
        .content_type("text/plain")
        .send()
        .await?;
    let h = s3
        .head_object()
        .bucket("data")
        .key("copies/big.bin")
        .send()
        .await?;
    assert_eq!(
        h.metadata()
            .and_then(|m| m.get("owner"))
            .map(String::as_str),
        Some("grace")
    );
    assert_eq!(h.content_type(), Some("text/plain"));
    assert_eq!(get_bytes(&s3, "data", "copies/big.bin").await?, body);

    // Folder objects.
    s3.put_object()
        .bucket("data")
        .key("empty-folder/")
        .send()
        .await?;
    s3.head_object()
        .bucket("data")
        .key("empty-folder/")
        .send()
        .await?;

    // Listing v1 and v2: prefix, delimiter, start-after, max-keys.
    for k in ["a/1", "a/2", "a-b", "a.c", "b/x/y", "b/z"] {
        put(&s3, "data", k, k.as_bytes()).await?;
    }
    let (keys, prefixes, _) = keys_v2(&s3, "data", "", Some("/"), 1000).await?;
    assert_eq!(keys, ["a-b", "a.c", "once"]);
    assert_eq!(prefixes, ["a/", "b/", "copies/", "dir/", "empty-folder/"]);
    let (keys, _, pages) = keys_v2(&s3, "data", "", None, 2).await?;
    let all = [
        "a-b",
        "a.c",
        "a/1",
        "a/2",
        "b/x/y",
        "b/z",
        "copies/big.bin",
        "dir/sub/big.bin",
        "empty-folder/",
        "once",
    ];
    assert_eq!(keys, all, "key order with '-' and '.' before '/'");
    assert_eq!(pages, 5);
    let (keys, prefixes, _) = keys_v2(&s3, "data", "b/", Some("/"), 1000).await?;
    assert_eq!(
        (keys, prefixes),
        (vec!["b/z".to_owned()], vec!["b/x/".to_owned()])
    );
    let (keys, _, _) = keys_v2(&s3, "data", "a", None, 1000).await?;
    assert_eq!(keys, ["a-b", "a.c", "a/1", "a/2"]);
    let after = s3
        .list_objects_v2()
        .bucket("data")
        .start_after("a/1")
        .max_keys(3)
        .send()
        .await?;
    let got: Vec<&str> = after.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(got, ["a/2", "b/x/y", "b/z"]);
    let v1 = s3
        .list_objects()
        .bucket("data")
        .delimiter("/")
        .marker("a.c")
        .send()
        .await?;
    let got: Vec<&str> = v1.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(got, ["once"]);
    let cps: Vec<&str> = v1
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(cps, ["a/", "b/", "copies/", "dir/", "empty-folder/"]);
    let o = after.contents().first().unwrap();
    assert_eq!(
        (o.size(), o.e_tag().map(|e| e.trim_matches('"').to_owned())),
        (Some(3), Some(md5_hex(b"a/2")))
    );

    // Delete one, delete many; emptied prefixes disappear.
    s3.delete_object()
        .bucket("data")
        .key("b/x/y")
        .send()
        .await?;
    s3.delete_object()
        .bucket("data")
        .key("b/x/never")
        .send()
        .await?;
    let del = Delete::builder()
        .objects(ObjectIdentifier::builder().key("a/1").build()?)
        .objects(ObjectIdentifier::builder().key("a/2").build()?)
        .objects(ObjectIdentifier::builder().key("../escape").build()?)
        .build()?;
    let out = s3
        .delete_objects()
        .bucket("data")
        .delete(del)
        .send()
        .await?;
    assert_eq!(out.deleted().len(), 2);
    assert_eq!(out.errors().len(), 1);
    let (_, prefixes, _) = keys_v2(&s3, "data", "", Some("/"), 1000).await?;
    assert_eq!(prefixes, ["b/", "copies/", "dir/", "empty-folder/"]);
    assert_eq!(
        code(s3.delete_bucket().bucket("data").send().await),
        "BucketNotEmpty"
    );

    // Presigned GET and PUT, through a plain HTTP client.
    let presign = PresigningConfig::expires_in(Duration::from_secs(300))?;
    let req = s3
        .put_object()
        .bucket("data")
        .key("presigned")
        .presigned(presign.clone())
        .await?;
    let status = raw_request("PUT", req.uri(), b"signed bytes").await?;
    assert_eq!(status.0, 200, "{}", status.1);
    let req = s3
        .get_object()
        .bucket("data")
        .key("presigned")
        .presigned(presign)
        .await?;
    let (status, body) = raw_request("GET", req.uri(), b"").await?;
    assert_eq!((status, body.as_str()), (200, "signed bytes"));

    // The same namespace through the client library.
    let client = cluster.client();
    assert_eq!(
        cairn_tests::read_file(&client, "/data/presigned").await?,
        b"signed bytes"
    );
    let data_dir = client.meta.resolve("/data").await?;
    client
        .meta
        .mkdir(data_dir.ino, b"from-client", 0o755)
        .await?;
    cairn_tests::write_file(
        &client,
        "/data/from-client/file",
        b"written by the client library",
    )
    .await?;
    assert_eq!(
        get_bytes(&s3, "data", "from-client/file").await?,
        b"written by the client library"
    );
    let (keys, _, _) = keys_v2(&s3, "data", "from-client/", None, 1000).await?;
    assert_eq!(keys, ["from-client/file"]);

    // Metrics and the access log saw the requests.
    let (status, text) = cairn_tests::http_get(&gw.metrics_addr, "/metrics").await?;
    assert_eq!(status, 200);
    let m = cairn_tests::parse_metrics(&text)?;
    assert!(
        m.get("cairn_s3_requests_total{op=\"PutObject\",status=\"200\"}")
            .copied()
            .unwrap_or(0.0)
            >= 8.0
    );
    assert!(
        m.get("cairn_s3_requests_total{op=\"GetObject\",status=\"404\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0
    );
    let log = std::fs::read_to_string(&gw.access_log)?;
    assert!(
        log.lines().count() > 50,
        "{} access log lines",
        log.lines().count()
    );
    assert!(log.lines().any(|l| l.contains("\"op\":\"DeleteObjects\"")));

    cairn_tests::check_tree(&client.meta).await?;
    Ok(())
}

/// One request on a fresh connection to a presigned URL: (status, body).
async fn raw_request(method: &str, uri: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    let rest = uri.strip_prefix("http://").context("http URL")?;
    let (host, target) = rest.split_at(rest.find('/').context("path")?);
    cairn_tests::sigv4::Request::new(method, host, target, body.to_vec())
        .send()
        .await
}

#[tokio::test]
async fn s3_multipart_100_mib_parts_in_parallel_and_out_of_order() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(READY).await?;
    let gw = S3Gateway::start(&cluster, "s3", "").await?;
    let s3 = gw.sdk();
    s3.create_bucket().bucket("ckpt").send().await?;

    let part_size = 8 << 20;
    let body = random_bytes(100 << 20, 7);
    let up = s3
        .create_multipart_upload()
        .bucket("ckpt")
        .key("run/model.bin")
        .content_type("application/x-ckpt")
        .send()
        .await?;
    let id = up.upload_id().context("upload id")?.to_owned();
    let numbers: Vec<i32> = (1..=body.len().div_ceil(part_size) as i32).rev().collect();
    let etags: Vec<(i32, String)> = futures::stream::iter(numbers)
        .map(|n| {
            let s3 = s3.clone();
            let id = id.clone();
            let start = (n as usize - 1) * part_size;
            let piece = body[start..(start + part_size).min(body.len())].to_vec();
            async move {
                let out = s3
                    .upload_part()
                    .bucket("ckpt")
                    .key("run/model.bin")
                    .upload_id(id)
                    .part_number(n)
                    .body(ByteStream::from(piece))
                    .send()
                    .await?;
                Ok::<_, anyhow::Error>((n, out.e_tag().unwrap_or_default().to_owned()))
            }
        })
        .buffer_unordered(6)
        .try_collect()
        .await?;
    let listed = s3
        .list_parts()
        .bucket("ckpt")
        .key("run/model.bin")
        .upload_id(&id)
        .send()
        .await?;
    assert_eq!(listed.parts().len(), 13);
    let uploads = s3.list_multipart_uploads().bucket("ckpt").send().await?;
    assert_eq!(uploads.uploads().len(), 1);

    // Nothing is visible until completion.
    assert_eq!(
        code(
            s3.head_object()
                .bucket("ckpt")
                .key("run/model.bin")
                .send()
                .await
        ),
        "NotFound"
    );
    let mut sorted = etags.clone();
    sorted.sort();
    let mut digest = Vec::new();
    for (_, e) in &sorted {
        digest.extend(hex_decode(e.trim_matches('"')));
    }
    let parts: Vec<CompletedPart> = sorted
        .iter()
        .map(|(n, e)| CompletedPart::builder().part_number(*n).e_tag(e).build())
        .collect();
    // Out of order or a wrong ETag is refused.
    let mut shuffled = parts.clone();
    shuffled.swap(0, 1);
    let r = s3
        .complete_multipart_upload()
        .bucket("ckpt")
        .key("run/model.bin")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(shuffled))
                .build(),
        )
        .send()
        .await;
    assert_eq!(code(r), "InvalidPartOrder");
    let done = s3
        .complete_multipart_upload()
        .bucket("ckpt")
        .key("run/model.bin")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await?;
    assert_eq!(
        done.e_tag().unwrap().trim_matches('"'),
        format!("{}-13", md5_hex(&digest))
    );
    let head = s3
        .head_object()
        .bucket("ckpt")
        .key("run/model.bin")
        .send()
        .await?;
    assert_eq!(head.content_length(), Some(body.len() as i64));
    assert_eq!(head.content_type(), Some("application/x-ckpt"));
    assert_eq!(get_bytes(&s3, "ckpt", "run/model.bin").await?, body);
    // A range across the join of parts 1 and 2 (and a 4 MiB block boundary).
    let r = s3
        .get_object()
        .bucket("ckpt")
        .key("run/model.bin")
        .range(format!("bytes={}-{}", part_size - 3, part_size + 3))
        .send()
        .await?;
    assert_eq!(
        &r.body.collect().await?.into_bytes()[..],
        &body[part_size - 3..=part_size + 3]
    );
    assert!(s3
        .list_multipart_uploads()
        .bucket("ckpt")
        .send()
        .await?
        .uploads()
        .is_empty());

    // Completion copied no data: the object's blocks are the parts' blocks.
    let client = cluster.client();
    let attr = client.meta.resolve("/ckpt/run/model.bin").await?;
    let blocks = client.blocks_of(attr.ino).await?;
    assert_eq!(
        blocks.len(),
        25,
        "100 MiB in 8 MiB parts of 4 MiB blocks: 2 per part"
    );

    // UploadPartCopy, ListParts paging, Abort.
    let up = s3
        .create_multipart_upload()
        .bucket("ckpt")
        .key("copy.bin")
        .send()
        .await?;
    let id2 = up.upload_id().unwrap().to_owned();
    let c = s3
        .upload_part_copy()
        .bucket("ckpt")
        .key("copy.bin")
        .upload_id(&id2)
        .part_number(1)
        .copy_source("ckpt/run/model.bin")
        .copy_source_range(format!("bytes=0-{}", (6 << 20) - 1))
        .send()
        .await?;
    let e1 = c
        .copy_part_result()
        .and_then(|r| r.e_tag())
        .unwrap()
        .to_owned();
    let e2 = s3
        .upload_part()
        .bucket("ckpt")
        .key("copy.bin")
        .upload_id(&id2)
        .part_number(2)
        .body(ByteStream::from_static(b"tail"))
        .send()
        .await?;
    let page = s3
        .list_parts()
        .bucket("ckpt")
        .key("copy.bin")
        .upload_id(&id2)
        .max_parts(1)
        .send()
        .await?;
    assert_eq!((page.parts().len(), page.is_truncated()), (1, Some(true)));
    s3.complete_multipart_upload()
        .bucket("ckpt")
        .key("copy.bin")
        .upload_id(&id2)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(CompletedPart::builder().part_number(1).e_tag(e1).build())
                .parts(
                    CompletedPart::builder()
                        .part_number(2)
                        .e_tag(e2.e_tag().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await?;
    let mut want = body[..6 << 20].to_vec();
    want.extend_from_slice(b"tail");
    assert_eq!(get_bytes(&s3, "ckpt", "copy.bin").await?, want);
    let up = s3
        .create_multipart_upload()
        .bucket("ckpt")
        .key("aborted")
        .send()
        .await?;
    let id3 = up.upload_id().unwrap().to_owned();
    s3.upload_part()
        .bucket("ckpt")
        .key("aborted")
        .upload_id(&id3)
        .part_number(1)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await?;
    s3.abort_multipart_upload()
        .bucket("ckpt")
        .key("aborted")
        .upload_id(&id3)
        .send()
        .await?;
    let r = s3
        .upload_part()
        .bucket("ckpt")
        .key("aborted")
        .upload_id(&id3)
        .part_number(2)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(code(r), "NoSuchUpload");
    let r = s3
        .list_parts()
        .bucket("ckpt")
        .key("aborted")
        .upload_id("0123456789abcdef0123456789abcdef")
        .send()
        .await;
    assert_eq!(code(r), "NoSuchUpload");

    // Deleting the bucket's objects lets it go (with its upload area).
    let up = s3
        .create_multipart_upload()
        .bucket("ckpt")
        .key("left-open")
        .send()
        .await?;
    assert!(up.upload_id().is_some());
    for k in ["run/model.bin", "copy.bin"] {
        s3.delete_object().bucket("ckpt").key(k).send().await?;
    }
    s3.delete_bucket().bucket("ckpt").send().await?;
    assert!(s3.list_buckets().send().await?.buckets().is_empty());
    cairn_tests::check_tree(&client.meta).await?;
    Ok(())
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn s3_lists_10000_keys_page_by_page_with_delimiters() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(READY).await?;
    let gw = S3Gateway::start(&cluster, "s3", "").await?;
    let s3 = gw.sdk();
    s3.create_bucket().bucket("dset").send().await?;
    // 10,000 keys in 10 directories of 1,000 (and a flat 'shard-N' sibling
    // file each, which sorts before the directory's keys), made through the
    // client library: the listing is what is tested.
    let client = cluster.client();
    let root = client.meta.resolve("/dset").await?;
    let mut expected = BTreeSet::new();
    for d in 0..10 {
        let dir = client
            .meta
            .mkdir(root.ino, format!("shard{d}").as_bytes(), 0o755)
            .await?;
        client
            .meta
            .create(root.ino, format!("shard{d}-meta").as_bytes(), 0o644, true)
            .await?;
        expected.insert(format!("shard{d}-meta"));
        let names: Vec<String> = (0..999).map(|i| format!("img-{i:05}.jpg")).collect();
        futures::stream::iter(names.iter())
            .map(|n| client.meta.create(dir.ino, n.as_bytes(), 0o644, true))
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await?;
        expected.extend(names.iter().map(|n| format!("shard{d}/{n}")));
    }
    assert_eq!(expected.len(), 10_000);
    let (keys, prefixes, pages) = keys_v2(&s3, "dset", "", None, 1000).await?;
    let want: Vec<String> = expected.iter().cloned().collect();
    if keys != want {
        let got: BTreeSet<&String> = keys.iter().collect();
        let missing: Vec<&String> = want.iter().filter(|k| !got.contains(k)).take(5).collect();
        panic!(
            "{} keys, {} expected; missing {missing:?}; order kept: {}",
            keys.len(),
            want.len(),
            keys.windows(2).all(|w| w[0] < w[1])
        );
    }
    assert_eq!(pages, 10);
    assert!(prefixes.is_empty());
    let (keys, prefixes, _) = keys_v2(&s3, "dset", "", Some("/"), 3).await?;
    assert_eq!(keys.len(), 10);
    assert_eq!(
        prefixes,
        (0..10).map(|d| format!("shard{d}/")).collect::<Vec<_>>()
    );
    let (keys, _, pages) = keys_v2(&s3, "dset", "shard7/", Some("/"), 250).await?;
    assert_eq!((keys.len(), pages), (999, 4));
    let (keys, _, _) = keys_v2(&s3, "dset", "shard3/img-0099", None, 1000).await?;
    assert_eq!(keys.len(), 9, "img-00990 to img-00998");
    // v1 pages with markers.
    let mut marker: Option<String> = None;
    let mut v1 = Vec::new();
    loop {
        let out = s3
            .list_objects()
            .bucket("dset")
            .prefix("shard9")
            .set_marker(marker.clone())
            .send()
            .await?;
        v1.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        if out.is_truncated() != Some(true) {
            break;
        }
        marker = v1.last().cloned();
    }
    assert_eq!(v1.len(), 1000);
    Ok(())
}

#[tokio::test]
async fn s3_keys_never_escape_their_bucket_and_if_none_match_has_one_winner() -> anyhow::Result<()>
{
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(READY).await?;
    let gw = S3Gateway::start(&cluster, "s3", "").await?;
    let s3 = gw.sdk();
    s3.create_bucket().bucket("safe").send().await?;
    s3.create_bucket().bucket("other").send().await?;
    put(&s3, "other", "secret", b"do not touch").await?;
    let long = "n".repeat(300);
    let deep = "d/".repeat(520) + "x";
    let bad = [
        "../other/secret",
        "a/../../other/secret",
        "./x",
        "a//b",
        "/lead",
        "a\0b",
        long.as_str(),
        deep.as_str(),
        "x/.cairn-put-0000000000000000",
    ];
    for key in bad {
        let r = s3
            .put_object()
            .bucket("safe")
            .key(key)
            .body(ByteStream::from_static(b"evil"))
            .send()
            .await;
        assert!(r.is_err(), "PUT {key:?} was accepted");
        let r = s3.get_object().bucket("safe").key(key).send().await;
        assert!(r.is_err(), "GET {key:?} answered");
        let r = s3
            .copy_object()
            .bucket("safe")
            .key("copy")
            .copy_source(format!("safe/{key}"))
            .send()
            .await;
        assert!(r.is_err(), "COPY from {key:?} answered");
    }
    // Percent-encoded dots and invalid UTF-8 through raw paths.
    for path in [
        "/safe/%2e%2e/other/secret",
        "/safe/a/%2E%2E/%2e%2e/other/secret",
        "/safe/%ff%fe",
        "/safe/a%00b",
    ] {
        let status = signed_put_status(&gw, path).await?;
        // Refused as a bad request, not as a bad signature (which would
        // prove nothing about the key rules).
        assert!(
            (400..500).contains(&status) && status != 403,
            "PUT {path} answered {status}"
        );
    }
    assert_eq!(get_bytes(&s3, "other", "secret").await?, b"do not touch");
    let (keys, _, _) = keys_v2(&s3, "safe", "", None, 1000).await?;
    assert!(keys.is_empty(), "{keys:?}");
    let client = cluster.client();
    let stats = cairn_tests::check_tree(&client.meta).await?;
    assert_eq!(stats.files, 1, "only other/secret exists");

    // 20 concurrent conditional PUTs: exactly one wins, the rest are 412.
    let results: Vec<String> = futures::stream::iter(0..20)
        .map(|i| {
            let s3 = s3.clone();
            async move {
                let r = s3
                    .put_object()
                    .bucket("safe")
                    .key("lock/owner")
                    .if_none_match("*")
                    .body(ByteStream::from(format!("writer {i}").into_bytes()))
                    .send()
                    .await;
                code(r)
            }
        })
        .buffer_unordered(20)
        .collect()
        .await;
    assert_eq!(
        results.iter().filter(|c| *c == "ok").count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results
            .iter()
            .filter(|c| *c == "PreconditionFailed")
            .count(),
        19,
        "{results:?}"
    );
    let winner = get_bytes(&s3, "safe", "lock/owner").await?;
    assert!(winner.starts_with(b"writer "));
    let stats = cairn_tests::check_tree(&client.meta).await?;
    assert_eq!(stats.files, 2, "no temporary file left behind");
    Ok(())
}

/// A PUT to a raw (already encoded) path, signed with the gateway's key.
async fn signed_put_status(gw: &S3Gateway, path: &str) -> anyhow::Result<u16> {
    let req = cairn_tests::sigv4::Request::new("PUT", &gw.addr, path, b"evil".to_vec());
    let (status, _) = req.signed(&gw.access_key, &gw.secret_key).send().await?;
    Ok(status)
}
