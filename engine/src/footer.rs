//! A store wrapper that checks a Parquet file's footer as it is read.
//!
//! The Parquet reader trusts the footer's metadata length: a file that ends
//! in `PAR1` but is not Parquet makes it compute a range before the file's
//! start and panic. Reads that end at the end of a `.parquet` object are
//! checked here first, so such a file fails with an error that names it.
//! Object sizes come from the listings and heads that precede every read.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

const MAGIC: &[u8; 4] = b"PAR1";
/// Metadata length (4 bytes) and magic (4 bytes) end every Parquet file.
const TAIL: u64 = 8;

/// Sizes remembered at most, per store; the oldest go first.
const SIZES: usize = 100_000;

#[derive(Debug)]
pub struct FooterCheck {
    inner: Arc<dyn ObjectStore>,
    sizes: Arc<Mutex<HashMap<Path, u64>>>,
}

impl FooterCheck {
    pub fn new(inner: Arc<dyn ObjectStore>) -> FooterCheck {
        FooterCheck {
            inner,
            sizes: Arc::default(),
        }
    }

    fn remember(sizes: &Mutex<HashMap<Path, u64>>, meta: &ObjectMeta) {
        if meta.location.extension() != Some("parquet") {
            return;
        }
        let mut sizes = sizes.lock().unwrap_or_else(|p| p.into_inner());
        if sizes.len() >= SIZES {
            sizes.clear();
        }
        sizes.insert(meta.location.clone(), meta.size);
    }

    fn size(&self, location: &Path) -> Option<u64> {
        let sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
        sizes.get(location).copied()
    }

    fn listing(
        &self,
        listed: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let sizes = self.sizes.clone();
        listed
            .inspect(move |m| {
                if let Ok(m) = m {
                    FooterCheck::remember(&sizes, m);
                }
            })
            .boxed()
    }
}

impl fmt::Display for FooterCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FooterCheck({})", self.inner)
    }
}

/// Why `tail`, the last bytes of an object of `size` bytes, is not the end
/// of a Parquet file; None when it is.
pub fn footer_problem(tail: &[u8], size: u64) -> Option<String> {
    if size < TAIL + 4 || tail.len() < TAIL as usize {
        return Some(format!("{size} bytes are too few for a Parquet file"));
    }
    let end = &tail[tail.len() - TAIL as usize..];
    if &end[4..] != MAGIC {
        return Some("it does not end with the Parquet magic bytes".into());
    }
    let metadata = u32::from_le_bytes([end[0], end[1], end[2], end[3]]) as u64;
    // The file starts with the magic too, so metadata fits between the two.
    if metadata + TAIL + 4 > size {
        return Some(format!(
            "its footer claims {metadata} bytes of metadata in a file of {size} bytes"
        ));
    }
    None
}

/// An object named `.parquet` whose bytes are not Parquet.
#[derive(Debug, thiserror::Error)]
#[error("{location} is not a valid Parquet file: {why}")]
pub struct NotParquet {
    pub location: String,
    pub why: String,
}

fn corrupt(location: &Path, why: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "Parquet",
        source: Box::new(NotParquet {
            location: location.to_string(),
            why,
        }),
    }
}

#[async_trait]
impl ObjectStore for FooterCheck {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let got = self.inner.get_opts(location, options).await?;
        FooterCheck::remember(&self.sizes, &got.meta);
        let at_end = got.range.end == got.meta.size && !got.range.is_empty();
        if !at_end || location.extension() != Some("parquet") {
            return Ok(got);
        }
        let (meta, range, attributes) =
            (got.meta.clone(), got.range.clone(), got.attributes.clone());
        let bytes = got.bytes().await?;
        if let Some(why) = footer_problem(&bytes, meta.size) {
            return Err(corrupt(location, why));
        }
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(bytes) }).boxed()),
            meta,
            range,
            attributes,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let got = self.inner.get_ranges(location, ranges).await?;
        if let Some(size) = self.size(location)
            && let Some(i) = ranges.iter().position(|r| r.end == size && !r.is_empty())
            && let Some(why) = footer_problem(&got[i], size)
        {
            return Err(corrupt(location, why));
        }
        Ok(got)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listing(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listing(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let listed = self.inner.list_with_delimiter(prefix).await?;
        for m in &listed.objects {
            FooterCheck::remember(&self.sizes, m);
        }
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::footer_problem;

    #[test]
    fn a_tail_that_is_not_a_parquet_footer_says_why() {
        let mut good = b"PAR1".to_vec();
        good.extend([0u8; 20]);
        good.extend(20u32.to_le_bytes());
        good.extend(b"PAR1");
        assert_eq!(footer_problem(&good, good.len() as u64), None);
        // Only the tail was read: the size is the whole file's.
        assert_eq!(footer_problem(&good[10..], good.len() as u64), None);

        let text = b"PAR1 this is not parquet at all PAR1";
        let why = footer_problem(text, text.len() as u64).expect("not Parquet");
        assert!(why.contains("bytes of metadata"), "{why}");
        let why = footer_problem(b"0123456789abcdef", 16).expect("no magic");
        assert!(why.contains("magic"), "{why}");
        assert!(footer_problem(b"PAR1", 4).is_some());
    }
}
