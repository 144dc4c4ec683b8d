//! The gateway and the other front ends see one namespace: objects PUT
//! through S3 are files on a FUSE mount byte for byte, files written on the
//! mount are objects, deletes on either side show on the other; and boto3
//! syncs a tree up and down with matching checksums.

use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;

use cairn_tests::random_bytes;
use cairn_tests::Cluster;
use cairn_tests::Mount;
use cairn_tests::S3Gateway;
use cairn_tests::Spec;

async fn keys(s3: &aws_sdk_s3::Client, bucket: &str) -> anyhow::Result<Vec<String>> {
    let out = s3.list_objects_v2().bucket(bucket).send().await?;
    Ok(out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect())
}

#[tokio::test]
async fn s3_objects_are_files_and_files_are_objects() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let gw = S3Gateway::start(&cluster, "s3", "").await?;
    let mount = Mount::start(&cluster, "mnt").await?;
    let s3 = gw.sdk();
    s3.create_bucket().bucket("shared").send().await?;
    let bucket = mount.path.join("shared");
    assert!(bucket.is_dir(), "a bucket is a top-level directory");

    // S3 -> mount, read-after-write, small (inline) and large (blocks).
    let small = b"through the gateway".to_vec();
    let large = random_bytes(9 << 20, 3);
    for (key, data) in [("a/small.txt", &small), ("a/b/large.bin", &large)] {
        s3.put_object()
            .bucket("shared")
            .key(key)
            .body(ByteStream::from(data.clone()))
            .send()
            .await?;
        let on_disk = tokio::fs::read(bucket.join(key))
            .await
            .with_context(|| key.to_owned())?;
        assert!(on_disk == *data, "{key} differs on the mount");
    }

    // Mount -> S3: list-after-write and read-after-write.
    std::fs::create_dir_all(bucket.join("fuse/dir"))?;
    std::fs::write(bucket.join("fuse/dir/file.txt"), b"written on the mount")?;
    std::fs::create_dir_all(bucket.join("fuse/empty"))?;
    assert_eq!(
        keys(&s3, "shared").await?,
        ["a/b/large.bin", "a/small.txt", "fuse/dir/file.txt"]
    );
    let got = s3
        .get_object()
        .bucket("shared")
        .key("fuse/dir/file.txt")
        .send()
        .await?;
    assert_eq!(
        &got.body.collect().await?.into_bytes()[..],
        b"written on the mount"
    );

    // A file changed on the mount gets a fresh ETag (the stored MD5 is stale).
    let before = s3
        .head_object()
        .bucket("shared")
        .key("a/small.txt")
        .send()
        .await?;
    std::fs::write(bucket.join("a/small.txt"), b"changed")?;
    let after = s3
        .head_object()
        .bucket("shared")
        .key("a/small.txt")
        .send()
        .await?;
    assert_ne!(before.e_tag(), after.e_tag());
    assert_eq!(after.content_length(), Some(7));

    // Deletes on either side.
    std::fs::remove_file(bucket.join("fuse/dir/file.txt"))?;
    let r = s3
        .get_object()
        .bucket("shared")
        .key("fuse/dir/file.txt")
        .send()
        .await;
    assert!(r.is_err(), "a file removed on the mount is no object");
    s3.delete_object()
        .bucket("shared")
        .key("a/b/large.bin")
        .send()
        .await?;
    assert!(
        !bucket.join("a/b").exists(),
        "the emptied prefix is gone from the mount too"
    );
    assert!(bucket.join("a/small.txt").exists());
    Ok(())
}

#[tokio::test]
async fn s3_boto3_syncs_a_tree_up_and_down() -> anyhow::Result<()> {
    let cluster = Cluster::start(Spec::one_data_server()).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let gw = S3Gateway::start(&cluster, "s3", "").await?;
    let work = cluster.dir.path().join("boto3");
    std::fs::create_dir_all(&work)?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/s3/boto3_sync.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args([&gw.endpoint(), &gw.access_key, &gw.secret_key])
        .arg(&work)
        .kill_on_drop(true)
        .output()
        .await
        .context("running python3 (scripts/test.sh installs boto3)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "boto3 sync failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log_tail()
    );
    assert!(stdout.contains("ok 34 files"), "{stdout}");
    Ok(())
}
