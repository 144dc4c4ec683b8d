//! What a request says about its own body, checked before the body is
//! published: `Content-MD5`, and the flexible checksums (`x-amz-checksum-crc32`,
//! `-crc32c`, `-crc64nvme`, `-sha1`, `-sha256`) sent either as headers or, for
//! `aws-chunked` bodies, as trailers named by `x-amz-trailer` that arrive after
//! the last chunk.
//!
//! Invariant: a body whose announced digest does not match is never renamed onto
//! its key. The digests are computed while the body is written into the hidden
//! temporary file and compared once the body has ended (trailers are only known
//! then), before the rename; a mismatch is 400 `BadDigest` and the temporary file
//! goes.

use bytes::Bytes;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::Checksum as _;
use s3s::crypto::Crc32;
use s3s::crypto::Crc32c;
use s3s::crypto::Crc64Nvme;
use s3s::crypto::Sha1;
use s3s::crypto::Sha256;
use s3s::dto::Checksum;
use s3s::s3_error;
use s3s::S3Result;
use s3s::TrailingHeaders;

/// The `x-amz-checksum-*` values of an input that has them (PutObject,
/// UploadPart: their fields share the names).
macro_rules! checksums_of {
    ($input:expr) => {
        s3s::dto::Checksum {
            checksum_crc32: $input.checksum_crc32.clone(),
            checksum_crc32c: $input.checksum_crc32c.clone(),
            checksum_crc64nvme: $input.checksum_crc64nvme.clone(),
            checksum_sha1: $input.checksum_sha1.clone(),
            checksum_sha256: $input.checksum_sha256.clone(),
            ..Default::default()
        }
    };
}
pub(crate) use checksums_of;

/// The flexible checksum algorithms, by the header (or trailer) that carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::Crc32,
    Algorithm::Crc32c,
    Algorithm::Crc64Nvme,
    Algorithm::Sha1,
    Algorithm::Sha256,
];

impl Algorithm {
    fn header(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "x-amz-checksum-crc32",
            Algorithm::Crc32c => "x-amz-checksum-crc32c",
            Algorithm::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Algorithm::Sha1 => "x-amz-checksum-sha1",
            Algorithm::Sha256 => "x-amz-checksum-sha256",
        }
    }

    fn of_header(name: &str) -> Option<Algorithm> {
        ALGORITHMS
            .into_iter()
            .find(|a| a.header().eq_ignore_ascii_case(name))
    }

    /// The digest's length in bytes (a value of another length is malformed).
    fn len(self) -> usize {
        match self {
            Algorithm::Crc32 | Algorithm::Crc32c => 4,
            Algorithm::Crc64Nvme => 8,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }

    fn field(self, c: &Checksum) -> Option<&String> {
        match self {
            Algorithm::Crc32 => c.checksum_crc32.as_ref(),
            Algorithm::Crc32c => c.checksum_crc32c.as_ref(),
            Algorithm::Crc64Nvme => c.checksum_crc64nvme.as_ref(),
            Algorithm::Sha1 => c.checksum_sha1.as_ref(),
            Algorithm::Sha256 => c.checksum_sha256.as_ref(),
        }
    }

    fn enable(self, h: &mut ChecksumHasher) {
        match self {
            Algorithm::Crc32 => h.crc32 = Some(Crc32::new()),
            Algorithm::Crc32c => h.crc32c = Some(Crc32c::new()),
            Algorithm::Crc64Nvme => h.crc64nvme = Some(Crc64Nvme::new()),
            Algorithm::Sha1 => h.sha1 = Some(Sha1::new()),
            Algorithm::Sha256 => h.sha256 = Some(Sha256::new()),
        }
    }
}

/// The digests a request announces for its body.
#[derive(Default)]
pub struct Announced {
    /// `Content-MD5`, decoded.
    md5: Option<Vec<u8>>,
    /// `x-amz-checksum-*` request headers (base64).
    headers: Checksum,
    /// Checksums named by `x-amz-trailer`, to be read from `trailers`.
    trailer_names: Vec<Algorithm>,
    trailers: Option<TrailingHeaders>,
}

/// The digests of a stored body, computed as it streamed in.
pub struct Computed {
    pub md5: [u8; 16],
    pub checksum: Checksum,
}

/// Computes what `Announced` needs while the body streams through.
pub struct Digester {
    md5: s3s::crypto::Md5,
    checksums: ChecksumHasher,
}

impl Digester {
    pub fn update(&mut self, data: &Bytes) {
        self.md5.update(data);
        self.checksums.update(data);
    }

    pub fn finalize(self) -> Computed {
        Computed {
            md5: self.md5.finalize(),
            checksum: self.checksums.finalize(),
        }
    }
}

impl Announced {
    /// What the request announces: `content_md5` (base64, `InvalidDigest` when
    /// malformed), the checksum headers s3s parsed into `headers`, the
    /// `x-amz-trailer` header of `request_headers` and the trailers handle of
    /// a streaming body.
    pub fn new(
        content_md5: Option<&str>,
        headers: Checksum,
        request_headers: &hyper::HeaderMap,
        trailers: Option<TrailingHeaders>,
    ) -> S3Result<Announced> {
        let md5 = match content_md5 {
            Some(b64) => Some(
                base64_simd::STANDARD
                    .decode_to_vec(b64)
                    .ok()
                    .filter(|m| m.len() == 16)
                    .ok_or_else(|| s3_error!(InvalidDigest, "Content-MD5 is not a base64 MD5"))?,
            ),
            None => None,
        };
        for a in ALGORITHMS {
            if let Some(v) = a.field(&headers) {
                decode(a, v)?;
            }
        }
        let mut trailer_names = Vec::new();
        for value in request_headers.get_all("x-amz-trailer") {
            let value = value
                .to_str()
                .map_err(|_| s3_error!(InvalidRequest, "x-amz-trailer is not ASCII"))?;
            trailer_names.extend(
                value
                    .split(',')
                    .filter_map(|n| Algorithm::of_header(n.trim())),
            );
        }
        if !trailer_names.is_empty() && trailers.is_none() {
            return Err(s3_error!(
                InvalidRequest,
                "x-amz-trailer names a checksum but the body is not a streaming payload with trailers"
            ));
        }
        Ok(Announced {
            md5,
            headers,
            trailer_names,
            trailers,
        })
    }

    /// A digester for the body: MD5 always (it is the ETag), and each
    /// announced checksum.
    pub fn digester(&self) -> Digester {
        let mut checksums = ChecksumHasher::default();
        for a in ALGORITHMS {
            if a.field(&self.headers).is_some() || self.trailer_names.contains(&a) {
                a.enable(&mut checksums);
            }
        }
        Digester {
            md5: s3s::crypto::Md5::new(),
            checksums,
        }
    }

    /// Checks the body's digests against what was announced; call once the
    /// body has ended (the trailers arrive with its end).
    pub fn verify(&self, computed: &Computed) -> S3Result<()> {
        if self.md5.as_ref().is_some_and(|m| *m != computed.md5) {
            return Err(s3_error!(
                BadDigest,
                "the Content-MD5 you specified did not match what was received"
            ));
        }
        for a in ALGORITHMS {
            if let Some(want) = a.field(&self.headers) {
                check(a, want, &computed.checksum)?;
            }
        }
        if self.trailer_names.is_empty() {
            return Ok(());
        }
        let trailers = self
            .trailers
            .as_ref()
            .and_then(|t| t.read(Clone::clone))
            .unwrap_or_default();
        for &a in &self.trailer_names {
            let want = trailers
                .get(a.header())
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    s3_error!(
                        IncompleteBody,
                        "the body ended without its announced {} trailer",
                        a.header()
                    )
                })?;
            check(a, want, &computed.checksum)?;
        }
        Ok(())
    }

    /// The checksums to answer with: the ones announced and verified.
    pub fn answered(&self, computed: &Computed) -> Checksum {
        let mut out = Checksum::default();
        let c = &computed.checksum;
        let keep =
            |a: Algorithm| a.field(&self.headers).is_some() || self.trailer_names.contains(&a);
        if keep(Algorithm::Crc32) {
            out.checksum_crc32 = c.checksum_crc32.clone();
        }
        if keep(Algorithm::Crc32c) {
            out.checksum_crc32c = c.checksum_crc32c.clone();
        }
        if keep(Algorithm::Crc64Nvme) {
            out.checksum_crc64nvme = c.checksum_crc64nvme.clone();
        }
        if keep(Algorithm::Sha1) {
            out.checksum_sha1 = c.checksum_sha1.clone();
        }
        if keep(Algorithm::Sha256) {
            out.checksum_sha256 = c.checksum_sha256.clone();
        }
        out
    }
}

fn decode(a: Algorithm, b64: &str) -> S3Result<Vec<u8>> {
    base64_simd::STANDARD
        .decode_to_vec(b64.trim())
        .ok()
        .filter(|d| d.len() == a.len())
        .ok_or_else(|| s3_error!(InvalidRequest, "the value of {} is malformed", a.header()))
}

fn check(a: Algorithm, want_b64: &str, computed: &Checksum) -> S3Result<()> {
    let want = decode(a, want_b64)?;
    let got = a
        .field(computed)
        .and_then(|g| base64_simd::STANDARD.decode_to_vec(g).ok());
    if got.as_deref() == Some(want.as_slice()) {
        Ok(())
    } else {
        Err(s3_error!(
            BadDigest,
            "the {} you specified did not match the calculated checksum",
            a.header()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(d: &[u8]) -> String {
        base64_simd::STANDARD.encode_to_string(d)
    }

    fn digest(a: &Announced, data: &[u8]) -> Computed {
        let mut d = a.digester();
        d.update(&Bytes::copy_from_slice(data));
        d.finalize()
    }

    #[test]
    fn header_checksums_are_verified() {
        let data = b"hello world";
        let good = Checksum {
            checksum_crc32: Some(b64(&Crc32::checksum(data))),
            checksum_sha256: Some(b64(&Sha256::checksum(data))),
            ..Default::default()
        };
        let a = Announced::new(None, good, &hyper::HeaderMap::new(), None).unwrap();
        let c = digest(&a, data);
        a.verify(&c).unwrap();
        assert!(a.answered(&c).checksum_crc32.is_some());
        assert!(a.answered(&c).checksum_sha1.is_none());
        let bad = Checksum {
            checksum_crc32c: Some(b64(&Crc32c::checksum(b"another body"))),
            ..Default::default()
        };
        let a = Announced::new(None, bad, &hyper::HeaderMap::new(), None).unwrap();
        let err = a.verify(&digest(&a, data)).unwrap_err();
        assert_eq!(err.code().as_str(), "BadDigest");
    }

    #[test]
    fn malformed_values_are_refused_before_the_body() {
        let bad = Checksum {
            checksum_sha1: Some(b64(b"short")),
            ..Default::default()
        };
        let err = Announced::new(None, bad, &hyper::HeaderMap::new(), None)
            .err()
            .unwrap();
        assert_eq!(err.code().as_str(), "InvalidRequest");
        let err = Announced::new(
            Some("not base64!"),
            Checksum::default(),
            &hyper::HeaderMap::new(),
            None,
        )
        .err()
        .unwrap();
        assert_eq!(err.code().as_str(), "InvalidDigest");
    }

    #[test]
    fn content_md5_is_verified() {
        let data = b"abc";
        let md5 = s3s::crypto::Md5::checksum(data);
        let a = Announced::new(
            Some(&b64(&md5)),
            Checksum::default(),
            &hyper::HeaderMap::new(),
            None,
        )
        .unwrap();
        a.verify(&digest(&a, data)).unwrap();
        let err = a.verify(&digest(&a, b"abd")).unwrap_err();
        assert_eq!(err.code().as_str(), "BadDigest");
    }

    #[test]
    fn a_trailer_without_a_streaming_body_is_refused() {
        let mut h = hyper::HeaderMap::new();
        h.insert("x-amz-trailer", "x-amz-checksum-crc32".parse().unwrap());
        let err = Announced::new(None, Checksum::default(), &h, None)
            .err()
            .unwrap();
        assert_eq!(err.code().as_str(), "InvalidRequest");
    }
}
