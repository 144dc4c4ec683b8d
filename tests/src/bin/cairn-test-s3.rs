//! A real S3-protocol server for the tests' cold tier: s3s-fs (objects as
//! files under a root directory, SigV4 checked against one key pair), served
//! over HTTP/1.1 on loopback until killed.
//!
//! `cairn-test-s3 ROOT LISTEN ACCESS_KEY SECRET_KEY`; every directory under
//! ROOT is a bucket. Prints `listening on ADDR` once it accepts connections.

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, listen, access_key, secret_key] = args.as_slice() else {
        anyhow::bail!("usage: cairn-test-s3 ROOT LISTEN ACCESS_KEY SECRET_KEY");
    };
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut builder = S3ServiceBuilder::new(fs);
    let mut auth = SimpleAuth::new();
    auth.register(access_key.clone(), secret_key.clone().into());
    builder.set_auth(auth);
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let service = service.clone();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
