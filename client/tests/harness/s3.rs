//! A real MinIO server for tests, started with `scripts/minio-up.sh` in a
//! temporary directory and stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;

pub const ACCESS_KEY: &str = "daskrs";
pub const SECRET_KEY: &str = "daskrs-secret";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

pub struct Minio {
    dir: tempfile::TempDir,
    pub endpoint: String,
}

impl Minio {
    pub fn start() -> Minio {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(script("minio-up.sh"))
            .arg(dir.path())
            .env("DASKRS_S3_ACCESS_KEY", ACCESS_KEY)
            .env("DASKRS_S3_SECRET_KEY", SECRET_KEY)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "MinIO did not start (scripts/install-minio.sh installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let endpoint = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Minio { dir, endpoint }
    }

    /// The environment a cluster process needs to reach this server with `secret`.
    pub fn env_with_secret(&self, secret: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("DASKRS_S3_ENDPOINT", self.endpoint.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    pub fn env(&self) -> Vec<(String, String)> {
        self.env_with_secret(SECRET_KEY)
    }

    pub fn client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub async fn create_bucket(&self, bucket: &str) {
        self.client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
    }

    /// TPC-H at scale 0.01 (4 files a table) made in `dir` and uploaded to
    /// `url` (`s3://bucket/prefix`), a directory of Parquet files per table
    /// below it, into a bucket made here.
    pub async fn put_tpch(&self, url: &str, dir: &Path) {
        daskrs_engine::tpch::generate(dir, 0.01, 4).expect("generate TPC-H data");
        let (bucket, prefix) = url
            .strip_prefix("s3://")
            .and_then(|p| p.split_once('/'))
            .expect("an s3://bucket/prefix URL");
        self.create_bucket(bucket).await;
        self.upload_dir(dir, bucket, prefix).await;
    }

    /// Uploads every file below `dir` to `s3://bucket/prefix/<relative path>`.
    pub async fn upload_dir(&self, dir: &Path, bucket: &str, prefix: &str) -> usize {
        let client = self.client();
        let mut n = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                client
                    .put_object()
                    .bucket(bucket)
                    .key(format!("{prefix}/{rel}"))
                    .body(ByteStream::from(std::fs::read(&path).unwrap()))
                    .send()
                    .await
                    .unwrap();
                n += 1;
            }
        }
        n
    }

    /// Multipart uploads started for `key` and neither completed nor aborted.
    pub async fn uploads_in_progress(&self, bucket: &str, key: &str) -> usize {
        let out = self
            .client()
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(key)
            .send()
            .await
            .unwrap();
        out.uploads()
            .iter()
            .filter(|u| u.key() == Some(key))
            .count()
    }

    /// Keys under `prefix`.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self
            .client()
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }
}

impl Drop for Minio {
    fn drop(&mut self) {
        let _ = Command::new(script("minio-down.sh"))
            .arg(self.dir.path())
            .output();
    }
}
