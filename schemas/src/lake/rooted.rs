//! A lake under a prefix of a bucket (`s3://bucket/a/prefix`): every path is relative to the prefix,
//! in and out.
//!
//! object_store's own `PrefixStore` (0.13) adds the prefix on the way in, and strips it from listings,
//! but not from the metadata that `get`/`head` return. DataFusion reads a file at the location `head`
//! gave it, so a scan asked for `tributary/tributary/raw/...` (the prefix twice) and got a 404: a
//! recompute on `s3://lake/tributary` failed with "the recompute query failed". This wrapper strips
//! the prefix from those answers too; everything else is `PrefixStore`'s.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// `inner` rooted at `prefix`.
#[derive(Debug)]
pub struct Rooted {
    prefix: Path,
    inner: PrefixStore<Arc<dyn ObjectStore>>,
}

impl Rooted {
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            prefix: Path::from(prefix),
            inner: PrefixStore::new(inner, prefix),
        }
    }

    fn relative(&self, location: Path) -> Path {
        if let Some(rest) = location.prefix_match(&self.prefix) {
            return rest.collect();
        }
        location
    }
}

impl fmt::Display for Rooted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rooted({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Rooted {
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
        let mut result = self.inner.get_opts(location, options).await?;
        result.meta.location = self.relative(result.meta.location);
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
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
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn what_a_get_or_head_returns_is_relative_to_the_prefix_as_listings_are() {
        let bucket: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let lake = Rooted::new(Arc::clone(&bucket), "a/prefix");
        let path = Path::from("raw/events/x.parquet");
        lake.put(&path, PutPayload::from_static(b"x"))
            .await
            .unwrap();
        assert!(
            bucket
                .head(&Path::from("a/prefix/raw/events/x.parquet"))
                .await
                .is_ok()
        );
        assert_eq!(lake.head(&path).await.unwrap().location, path);
        assert_eq!(lake.get(&path).await.unwrap().meta.location, path);
        // What object_store's PrefixStore alone answers (the reason for this type):
        let plain = PrefixStore::new(bucket, "a/prefix");
        assert_ne!(plain.head(&path).await.unwrap().location, path);
        use futures::TryStreamExt;
        let listed: Vec<_> = lake
            .list(None)
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed, [path]);
    }
}
