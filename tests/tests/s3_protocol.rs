//! What S3 clients rely on beyond the happy path, each through a real S3
//! client (aws-sdk-s3) or, where the SDK cannot produce the bad input, a
//! request signed by the harness: body checksums (trailers and headers) are
//! verified before anything is published, `aws-chunked` framing never
//! becomes an object's Content-Encoding, error answers have S3's shape,
//! listings name an owner, DeleteObjects of 1,000 keys deletes them all, and
//! CompleteMultipartUpload is exclusive and idempotent.

use std::time::Duration;
use std::time::Instant;

use aws_sdk_s3::operation::RequestId;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::CompletedMultipartUpload;
use aws_sdk_s3::types::CompletedPart;
use aws_sdk_s3::types::Delete;
use aws_sdk_s3::types::ObjectIdentifier;
use futures::stream::StreamExt;
use futures::stream::TryStreamExt;
use s3s::crypto::Checksum;

use cairn_tests::random_bytes;
use cairn_tests::sigv4::base64;
use cairn_tests::sigv4::Request;
use cairn_tests::Cluster;
use cairn_tests::S3Gateway;
use cairn_tests::Spec;

const READY: Duration = Duration::from_secs(60);

fn md5(data: &[u8]) -> Vec<u8> {
    use md5::Digest;
    md5::Md5::digest(data).to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The S3 error code of a failed call ("ok" for none).
fn code<E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug, R>(
    r: &Result<R, aws_sdk_s3::error::SdkError<E>>,
) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => match e.as_service_error().and_then(|s| s.code()) {
            Some(c) => c.to_owned(),
            None => match e.raw_response() {
                Some(raw) => format!("http {}", raw.status().as_u16()),
                None => format!("{e:?}"),
            },
        },
    }
}

/// A one-data-server cluster, a gateway with the default config in front of
/// it and an SDK client of that gateway (the cluster and the gateway live as
/// long as the values do).
async fn gateway() -> anyhow::Result<(Cluster, S3Gateway, aws_sdk_s3::Client)> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(READY).await?;
    let gw = S3Gateway::start(&cluster, "s3", "").await?;
    let s3 = gw.sdk();
    Ok((cluster, gw, s3))
}

async fn get_bytes(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
    let out = s3.get_object().bucket(bucket).key(key).send().await?;
    Ok(out.body.collect().await?.into_bytes().to_vec())
}

async fn exists(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> anyhow::Result<bool> {
    match s3.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Each flexible checksum: its header name and the base64 digest of `data`.
fn checksums(data: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        (
            "x-amz-checksum-crc32",
            base64(&s3s::crypto::Crc32::checksum(data)),
        ),
        (
            "x-amz-checksum-crc32c",
            base64(&s3s::crypto::Crc32c::checksum(data)),
        ),
        (
            "x-amz-checksum-crc64nvme",
            base64(&s3s::crypto::Crc64Nvme::checksum(data)),
        ),
        (
            "x-amz-checksum-sha1",
            base64(s3s::crypto::Sha1::checksum(data).as_ref()),
        ),
        (
            "x-amz-checksum-sha256",
            base64(s3s::crypto::Sha256::checksum(data).as_ref()),
        ),
    ]
}

#[tokio::test]
async fn s3_a_wrong_trailing_checksum_is_bad_digest_and_stores_nothing() -> anyhow::Result<()> {
    let (cluster, gw, s3) = gateway().await?;
    let (host, key, secret) = (
        gw.addr.as_str(),
        gw.access_key.as_str(),
        gw.secret_key.as_str(),
    );
    s3.create_bucket().bucket("sums").send().await?;
    s3.put_object()
        .bucket("sums")
        .key("kept")
        .body(ByteStream::from_static(b"old content"))
        .send()
        .await?;
    let up = s3
        .create_multipart_upload()
        .bucket("sums")
        .key("mp")
        .send()
        .await?;
    let upload_id = up.upload_id().unwrap_or_default().to_owned();
    let data = random_bytes(200_000, 1);
    let wrong = checksums(b"some other body");
    let before = cairn_tests::check_tree(&cluster.client().meta).await?;

    let mut refused = 0;
    for (name, value) in &wrong {
        let trailer = [(*name, value.as_str())];
        // A new key, an existing key, and a part: each refused, nothing stored.
        for path in ["/sums/new", "/sums/kept"] {
            let r = Request::new("PUT", host, path, data.clone())
                .streaming_unsigned_trailer(key, secret, 64 << 10, &trailer)
                .send()
                .await?;
            assert_eq!(r.0, 400, "{name} trailer on {path}: {}", r.1);
            assert!(r.1.contains("<Code>BadDigest</Code>"), "{}", r.1);
            refused += 1;
        }
        let r = Request::new("PUT", host, "/sums/mp", data.clone())
            .query("partNumber", "1")
            .query("uploadId", &upload_id)
            .streaming_unsigned_trailer(key, secret, 64 << 10, &trailer)
            .send()
            .await?;
        assert_eq!(r.0, 400, "{name} trailer on a part: {}", r.1);
        assert!(r.1.contains("<Code>BadDigest</Code>"), "{}", r.1);
        // The same checksum as a header of a plain signed PUT.
        let r = Request::new("PUT", host, "/sums/kept", data.clone())
            .header(name, value)
            .signed(key, secret)
            .send()
            .await?;
        assert_eq!(r.0, 400, "{name} header: {}", r.1);
        assert!(r.1.contains("<Code>BadDigest</Code>"), "{}", r.1);
        refused += 3;
    }
    assert_eq!(refused, 5 * wrong.len());
    // An announced trailer that never comes is refused as well.
    let r = Request::new("PUT", host, "/sums/new", data.clone())
        .header("x-amz-trailer", "x-amz-checksum-crc32")
        .streaming_unsigned_trailer(key, secret, 64 << 10, &[])
        .send()
        .await?;
    assert_eq!(r.0, 400, "a missing trailer: {}", r.1);

    assert!(
        !exists(&s3, "sums", "new").await?,
        "a refused PUT was stored"
    );
    assert_eq!(get_bytes(&s3, "sums", "kept").await?, b"old content");
    let parts = s3
        .list_parts()
        .bucket("sums")
        .key("mp")
        .upload_id(&upload_id)
        .send()
        .await?;
    assert!(parts.parts().is_empty(), "a refused part was stored");
    let after = cairn_tests::check_tree(&cluster.client().meta).await?;
    assert_eq!(
        (after.dirs, after.files),
        (before.dirs, before.files),
        "a refused upload left a file behind"
    );

    // The right trailers are accepted, and the checksum is answered.
    for (i, (name, value)) in checksums(&data).iter().enumerate() {
        let path = format!("/sums/ok-{i}");
        let r = Request::new("PUT", host, &path, data.clone())
            .streaming_unsigned_trailer(key, secret, 64 << 10, &[(name, value)])
            .send_full()
            .await?;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(r.header(name), Some(value.as_str()), "{name}");
        assert_eq!(get_bytes(&s3, "sums", &format!("ok-{i}")).await?, data);
    }
    let r = Request::new("PUT", host, "/sums/mp", data.clone())
        .query("partNumber", "1")
        .query("uploadId", &upload_id)
        .streaming_unsigned_trailer(
            key,
            secret,
            64 << 10,
            &[("x-amz-checksum-crc32c", &checksums(&data)[1].1)],
        )
        .send()
        .await?;
    assert_eq!(r.0, 200, "{}", r.1);
    let parts = s3
        .list_parts()
        .bucket("sums")
        .key("mp")
        .upload_id(&upload_id)
        .send()
        .await?;
    assert_eq!(parts.parts().len(), 1);
    Ok(())
}

#[tokio::test]
async fn s3_aws_chunked_is_not_stored_as_content_encoding() -> anyhow::Result<()> {
    let (cluster, gw, s3) = gateway().await?;
    s3.create_bucket().bucket("enc").send().await?;
    let data = random_bytes(300_000, 2);
    let file = cluster.dir.path().join("body");
    std::fs::write(&file, &data)?;

    // The SDK streams a file body as aws-chunked with a CRC32 trailer.
    s3.put_object()
        .bucket("enc")
        .key("plain")
        .body(ByteStream::from_path(&file).await?)
        .send()
        .await?;
    s3.put_object()
        .bucket("enc")
        .key("gz")
        .content_encoding("gzip")
        .body(ByteStream::from_path(&file).await?)
        .send()
        .await?;
    // A hand-signed streaming PUT (signed chunks) with gzip as well.
    let r = Request::new("PUT", &gw.addr, "/enc/signed-gz", data.clone())
        .header("content-encoding", "gzip")
        .streaming_signed(&gw.access_key, &gw.secret_key, 64 << 10, None)
        .send()
        .await?;
    assert_eq!(r.0, 200, "{}", r.1);

    for (key, want) in [
        ("plain", None),
        ("gz", Some("gzip")),
        ("signed-gz", Some("gzip")),
    ] {
        let head = s3.head_object().bucket("enc").key(key).send().await?;
        assert_eq!(head.content_encoding(), want, "HEAD {key}");
        let got = s3.get_object().bucket("enc").key(key).send().await?;
        assert_eq!(got.content_encoding(), want, "GET {key}");
        assert_eq!(
            got.body.collect().await?.into_bytes().as_ref(),
            data,
            "{key}"
        );
    }
    // Multipart: the encoding is given at creation.
    let up = s3
        .create_multipart_upload()
        .bucket("enc")
        .key("mp")
        .content_encoding("aws-chunked,gzip")
        .send()
        .await?;
    let id = up.upload_id().unwrap_or_default();
    let part = s3
        .upload_part()
        .bucket("enc")
        .key("mp")
        .upload_id(id)
        .part_number(1)
        .body(ByteStream::from_path(&file).await?)
        .send()
        .await?;
    s3.complete_multipart_upload()
        .bucket("enc")
        .key("mp")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(
                    CompletedPart::builder()
                        .part_number(1)
                        .e_tag(part.e_tag().unwrap_or_default())
                        .build(),
                )
                .build(),
        )
        .send()
        .await?;
    let head = s3.head_object().bucket("enc").key("mp").send().await?;
    assert_eq!(head.content_encoding(), Some("gzip"));
    assert_eq!(get_bytes(&s3, "enc", "mp").await?, data);
    Ok(())
}

#[tokio::test]
async fn s3_error_answers_carry_message_resource_and_request_id() -> anyhow::Result<()> {
    let (_cluster, gw, s3) = gateway().await?;
    s3.create_bucket().bucket("errs").send().await?;

    // Through the SDK: what a user sees.
    let r = s3.get_object().bucket("errs").key("missing").send().await;
    assert_eq!(code(&r), "NoSuchKey");
    let e = r.expect_err("a missing key").into_service_error();
    use aws_sdk_s3::error::ProvideErrorMetadata;
    assert_eq!(e.message(), Some("The specified key does not exist."));
    assert!(
        e.request_id().is_some_and(|id| !id.is_empty()),
        "no request id: {e:?}"
    );

    // On the wire, for errors of each layer: the store (NoSuchKey), s3s's
    // parsing and auth (SignatureDoesNotMatch, NoSuchBucket).
    let (host, key, secret) = (
        gw.addr.as_str(),
        gw.access_key.as_str(),
        gw.secret_key.as_str(),
    );
    let cases = [
        (
            Request::new("GET", host, "/errs/a%26b", Vec::new()).signed(key, secret),
            404,
            "NoSuchKey",
            "/errs/a&amp;b",
        ),
        (
            Request::new("GET", host, "/errs/x", Vec::new()).signed(key, "a-wrong-secret-key"),
            403,
            "SignatureDoesNotMatch",
            "/errs/x",
        ),
        (
            Request::new("GET", host, "/nobucket", Vec::new()).signed(key, secret),
            404,
            "NoSuchBucket",
            "/nobucket",
        ),
    ];
    let mut ids = std::collections::HashSet::new();
    for (req, status, want, resource) in cases {
        let r = req.send_full().await?;
        assert_eq!(r.status, status, "{want}: {}", r.body);
        let id = r.header("x-amz-request-id").unwrap_or_default().to_owned();
        assert!(!id.is_empty(), "{want}: no x-amz-request-id");
        assert!(ids.insert(id.clone()), "request id {id} answered twice");
        for part in [
            format!("<Code>{want}</Code>"),
            "<Message>".to_owned(),
            format!("<Resource>{resource}</Resource>"),
            format!("<RequestId>{id}</RequestId>"),
        ] {
            assert!(r.body.contains(&part), "{want}: no {part} in {}", r.body);
        }
        assert!(!r.body.contains("<Message></Message>"), "{}", r.body);
    }
    // Successful answers carry a request id too.
    let r = Request::new("GET", host, "/errs", Vec::new())
        .signed(key, secret)
        .send_full()
        .await?;
    assert_eq!(r.status, 200);
    assert!(r.header("x-amz-request-id").is_some());
    Ok(())
}

#[tokio::test]
async fn s3_listings_name_the_owner() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(READY).await?;
    let id = "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be";
    let gw = S3Gateway::start(
        &cluster,
        "s3",
        &format!("[owner]\nid = \"{id}\"\ndisplay_name = \"team-a\""),
    )
    .await?;
    let s3 = gw.sdk();
    s3.create_bucket().bucket("owned").send().await?;
    for k in ["a", "dir/b"] {
        s3.put_object()
            .bucket("owned")
            .key(k)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await?;
    }
    let buckets = s3.list_buckets().send().await?;
    let owner = buckets.owner().expect("ListBuckets names an owner");
    assert_eq!(
        (owner.id(), owner.display_name()),
        (Some(id), Some("team-a"))
    );

    let v2 = s3
        .list_objects_v2()
        .bucket("owned")
        .fetch_owner(true)
        .send()
        .await?;
    assert_eq!(v2.contents().len(), 2);
    for o in v2.contents() {
        let owner = o.owner().expect("FetchOwner=true names the owner");
        assert_eq!(
            (owner.id(), owner.display_name()),
            (Some(id), Some("team-a"))
        );
    }
    let plain = s3.list_objects_v2().bucket("owned").send().await?;
    assert!(plain.contents().iter().all(|o| o.owner().is_none()));
    let v1 = s3.list_objects().bucket("owned").send().await?;
    assert_eq!(v1.contents().len(), 2);
    for o in v1.contents() {
        let owner = o.owner().expect("ListObjects names the owner");
        assert_eq!(owner.id(), Some(id));
    }
    Ok(())
}

#[tokio::test]
async fn s3_delete_objects_of_1000_keys_deletes_every_one() -> anyhow::Result<()> {
    let (_cluster, _gw, s3) = gateway().await?;
    s3.create_bucket().bucket("many").send().await?;
    // Flat keys and keys in ten directories, which the delete must prune.
    let keys: Vec<String> = (0..1000)
        .map(|i| {
            if i % 2 == 0 {
                format!("k{i:04}")
            } else {
                format!("d{}/k{i:04}", i % 10)
            }
        })
        .collect();
    futures::stream::iter(keys.clone())
        .map(|k| {
            let s3 = s3.clone();
            async move {
                s3.put_object()
                    .bucket("many")
                    .key(&k)
                    .body(ByteStream::from(k.clone().into_bytes()))
                    .send()
                    .await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let listed = s3.list_objects_v2().bucket("many").send().await?;
    assert_eq!(listed.key_count(), Some(1000));

    let mut delete = Delete::builder();
    for k in &keys {
        delete = delete.objects(ObjectIdentifier::builder().key(k).build()?);
    }
    let started = Instant::now();
    let out = s3
        .delete_objects()
        .bucket("many")
        .delete(delete.build()?)
        .send()
        .await?;
    eprintln!("DeleteObjects of 1000 keys: {:?}", started.elapsed());
    assert!(out.errors().is_empty(), "{:?}", out.errors());
    let mut deleted: Vec<String> = out
        .deleted()
        .iter()
        .filter_map(|d| d.key().map(str::to_owned))
        .collect();
    deleted.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(deleted, want);
    let left = s3.list_objects_v2().bucket("many").send().await?;
    assert_eq!(left.key_count(), Some(0), "{:?}", left.contents());
    let with_prefixes = s3
        .list_objects_v2()
        .bucket("many")
        .delimiter("/")
        .send()
        .await?;
    assert!(
        with_prefixes.common_prefixes().is_empty(),
        "emptied directories were left: {:?}",
        with_prefixes.common_prefixes()
    );
    s3.delete_bucket().bucket("many").send().await?;
    Ok(())
}

/// An upload of two parts (5 MiB and 1 MiB): its id, the parts to complete
/// it with, the object's bytes and its ETag.
async fn two_part_upload(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    seed: u64,
) -> anyhow::Result<(String, CompletedMultipartUpload, Vec<u8>, String)> {
    let up = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await?;
    let id = up.upload_id().unwrap_or_default().to_owned();
    let parts = [random_bytes(5 << 20, seed), random_bytes(1 << 20, seed + 1)];
    let mut done = CompletedMultipartUpload::builder();
    let mut md5s = Vec::new();
    for (i, data) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let out = s3
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(data.clone()))
            .send()
            .await?;
        done = done.parts(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().unwrap_or_default())
                .build(),
        );
        md5s.extend(md5(data));
    }
    let etag = format!("{}-2", hex(&md5(&md5s)));
    Ok((id, done.build(), parts.concat(), etag))
}

#[tokio::test]
async fn s3_concurrent_completes_publish_the_parts_exactly_once() -> anyhow::Result<()> {
    let (cluster, _gw, s3) = gateway().await?;
    s3.create_bucket().bucket("race").send().await?;
    for round in 0..4u64 {
        let key = format!("obj-{round}");
        let (id, parts, data, etag) = two_part_upload(&s3, "race", &key, round * 10).await?;
        let answers = futures::future::join_all((0..8).map(|_| {
            s3.complete_multipart_upload()
                .bucket("race")
                .key(&key)
                .upload_id(&id)
                .multipart_upload(parts.clone())
                .send()
        }))
        .await;
        let mut won = 0;
        for a in &answers {
            match a {
                Ok(out) => {
                    assert_eq!(
                        out.e_tag().map(|e| e.trim_matches('"')),
                        Some(etag.as_str()),
                        "round {round}"
                    );
                    won += 1;
                }
                Err(_) => assert_eq!(code(a), "NoSuchUpload", "round {round}"),
            }
        }
        assert!(won >= 1, "round {round}: no completion succeeded");
        let head = s3.head_object().bucket("race").key(&key).send().await?;
        assert_eq!(
            head.e_tag().map(|e| e.trim_matches('"')),
            Some(etag.as_str())
        );
        assert_eq!(
            head.content_length(),
            Some(data.len() as i64),
            "round {round}"
        );
        assert!(
            get_bytes(&s3, "race", &key).await? == data,
            "round {round}: other bytes"
        );
    }
    let uploads = s3.list_multipart_uploads().bucket("race").send().await?;
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
    cairn_tests::check_tree(&cluster.client().meta).await?;
    Ok(())
}

#[tokio::test]
async fn s3_a_complete_retried_after_success_answers_the_same_etag() -> anyhow::Result<()> {
    let (_cluster, _gw, s3) = gateway().await?;
    s3.create_bucket().bucket("retry").send().await?;
    let (id, parts, data, etag) = two_part_upload(&s3, "retry", "obj", 7).await?;
    let complete = || {
        s3.complete_multipart_upload()
            .bucket("retry")
            .key("obj")
            .upload_id(&id)
            .multipart_upload(parts.clone())
            .send()
    };
    let first = complete().await?;
    assert_eq!(
        first.e_tag().map(|e| e.trim_matches('"')),
        Some(etag.as_str())
    );
    let again = complete().await?;
    assert_eq!(again.e_tag(), first.e_tag());
    assert!(get_bytes(&s3, "retry", "obj").await? == data);
    let head = s3.head_object().bucket("retry").key("obj").send().await?;
    assert_eq!(head.e_tag(), first.e_tag());
    // Once the key holds another object, the upload is gone for good.
    s3.put_object()
        .bucket("retry")
        .key("obj")
        .body(ByteStream::from_static(b"replaced"))
        .send()
        .await?;
    assert_eq!(code(&complete().await), "NoSuchUpload");
    assert_eq!(get_bytes(&s3, "retry", "obj").await?, b"replaced");
    Ok(())
}
