//! The PostgreSQL + pgvector back end: a datastore held in a table of a PostgreSQL server (any
//! deployment: one server, read replicas, Citus; see `PGVECTOR.md`), pushed from a local store
//! with [`push`] and searched with [`PgStore`].
//!
//! URL: `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?table=NAME][&LIBPQ_PARAM=VALUE…]`
//! (`postgresql://` too). `table` (default [`DEFAULT_TABLE`]) names the datastore's table; the
//! other query parameters go to the connection (e.g. `sslmode`, `connect_timeout`,
//! `application_name`). Table names are `[a-z_][a-z0-9_]*`, at most 50 characters.
//!
//! Schema (created by [`push`] in one transaction, so a failed push leaves nothing behind):
//!
//! ```sql
//! CREATE TABLE <table> (id bigint PRIMARY KEY, caption text NOT NULL, image_id bigint,
//!                       embedding vector(<dim>) NOT NULL);
//! CREATE TABLE <table>_manifest (manifest jsonb NOT NULL);  -- one row: the store's manifest.json
//! ```
//!
//! Exact search ([`PgStore::search`]) is `ORDER BY embedding <#> q, id LIMIT 2k` (`<#>` is the
//! negative inner product) with index scans disabled, so the server scans every row. The best
//! `2k` rows by (score, lower id) contain every row that can influence FAISS's heap, which is
//! replayed over them ([`crate::search`] module note): the ids are FAISS `IndexFlatIP`'s and the
//! local [`crate::Datastore::search`]'s, ties between equal scores included. Where they can
//! differ: pgvector sums the inner product in f32 in its own order, our GEMM and FAISS in theirs,
//! so two rows whose scores differ only by rounding (|Δ| ≈ 1e-7) can come out in the other order.
//! Rows with bit-identical scores (duplicate vectors) are ordered identically.
//!
//! Approximate search ([`PgStore::search_approx`]) uses a pgvector HNSW index
//! ([`PgStore::create_hnsw_index`], `USING hnsw (embedding vector_ip_ops)`).

use crate::captions::CaptionRecord;
use crate::error::{Error, Result};
use crate::search::{check_queries, faiss_result, Hit};
use crate::store::{Datastore, Manifest};
use pgvector::Vector;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{Kind, Type};
use postgres::{Client, NoTls};
use std::sync::Mutex;

/// The table used when the URL names none.
pub const DEFAULT_TABLE: &str = "smallcap_datastore";
const MAX_TABLE_LEN: usize = 50;

/// A parsed datastore URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgUrl {
    /// The connection URL without the `table` parameter (what the client connects with).
    pub conn: String,
    /// The datastore's table.
    pub table: String,
}

impl PgUrl {
    /// Parses `postgres://…[?table=NAME&…]`.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |msg: String| {
            Err(Error::Invalid(format!(
                "datastore URL {}: {msg}",
                redact(url)
            )))
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return bad("must start with postgres:// or postgresql://".into());
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut table = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("table", v)) => {
                    if table.is_some() {
                        return bad("the table parameter is given twice".into());
                    }
                    table = Some(v.to_string());
                }
                Some(_) => rest.push(pair),
                None => return bad(format!("query parameter `{pair}` has no value")),
            }
        }
        let table = table.unwrap_or_else(|| DEFAULT_TABLE.into());
        let ok = !table.is_empty()
            && table.len() <= MAX_TABLE_LEN
            && table
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !table.as_bytes()[0].is_ascii_digit();
        if !ok {
            return bad(format!(
                "table name `{table}` must be [a-z_][a-z0-9_]* and at most {MAX_TABLE_LEN} characters"
            ));
        }
        let conn = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        Ok(PgUrl { conn, table })
    }

    /// The URL without its password (for messages).
    pub fn redacted(&self) -> String {
        let sep = if self.conn.contains('?') { '&' } else { '?' };
        format!("{}{sep}table={}", redact(&self.conn), self.table)
    }
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => {
            let user = &rest[..at];
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            let masked = if rest[..at].contains(':') {
                format!("{user}:***")
            } else {
                user.into()
            };
            format!("{scheme}://{masked}{}", &rest[at..])
        }
        None => url.into(),
    }
}

fn pg(what: impl Into<String>) -> impl FnOnce(postgres::Error) -> Error {
    let what = what.into();
    move |source| Error::Postgres { what, source }
}

fn connect(url: &PgUrl) -> Result<Client> {
    Client::connect(&url.conn, NoTls).map_err(pg(format!("connecting to {}", url.redacted())))
}

/// The `vector` type of the connected database (an extension type: its oid varies).
fn vector_type(client: &mut Client) -> Result<Type> {
    let row = client
        .query_one(
            "SELECT t.oid, n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.typname = 'vector'",
            &[],
        )
        .map_err(pg("looking up the pgvector type `vector`"))?;
    Ok(Type::new(
        "vector".into(),
        row.get(0),
        Kind::Simple,
        row.get(1),
    ))
}

/// Options of [`push`].
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Replace the table when it exists (otherwise pushing to an existing table is an error).
    pub replace: bool,
    /// The encoder identity to record instead of the store's manifest's (a table has no folder
    /// that a path relative to the store could be resolved against).
    pub encoder: Option<String>,
}

/// Copies a local store into `url`'s table (see the module note for the schema): creates the
/// `vector` extension if needed, then in one transaction (re)creates the tables, streams the rows
/// with `COPY … FROM STDIN (FORMAT BINARY)`, adds the primary key and stores the manifest.
/// Returns the number of rows pushed.
///
/// Errors: bad URL; unreachable server; the table exists and `opts.replace` is false; any
/// server error (the transaction is rolled back: nothing is left behind).
pub fn push(store: &Datastore, url: &str, opts: &PushOptions) -> Result<usize> {
    let url = PgUrl::parse(url)?;
    let where_ = url.redacted();
    let mut client = connect(&url)?;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
        .map_err(pg(format!(
            "{where_}: CREATE EXTENSION vector (is pgvector installed?)"
        )))?;
    let vtype = vector_type(&mut client)?;
    let t = &url.table;
    let mut tx = client
        .transaction()
        .map_err(pg(format!("{where_}: BEGIN")))?;
    let exists: bool = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[t])
        .map_err(pg(format!("{where_}: checking for table {t}")))?
        .get(0);
    if exists && !opts.replace {
        return Err(Error::Invalid(format!(
            "{where_}: table {t} already exists; push with replace to overwrite it"
        )));
    }
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS {t}; DROP TABLE IF EXISTS {t}_manifest; \
         CREATE TABLE {t} (id bigint NOT NULL, caption text NOT NULL, image_id bigint, \
         embedding vector({}) NOT NULL); \
         CREATE TABLE {t}_manifest (manifest jsonb NOT NULL);",
        store.dim()
    ))
    .map_err(pg(format!("{where_}: creating table {t}")))?;
    let copy = tx
        .copy_in(&format!(
            "COPY {t} (id, caption, image_id, embedding) FROM STDIN (FORMAT BINARY)"
        ))
        .map_err(pg(format!("{where_}: COPY into {t}")))?;
    let mut w = BinaryCopyInWriter::new(copy, &[Type::INT8, Type::TEXT, Type::INT8, vtype]);
    let set = store.vectors();
    let mut written = 0usize;
    set.for_each_chunk(|start, rows| {
        for (j, row) in rows.chunks_exact(store.dim()).enumerate() {
            let id = start + j;
            let cap = store.caption(id)?;
            let v = Vector::from(row.to_vec());
            w.write(&[&(id as i64), &cap.text, &cap.image_id, &v])
                .map_err(pg(format!("{where_}: COPY row {id} into {t}")))?;
            written += 1;
        }
        Ok(())
    })?;
    w.finish()
        .map_err(pg(format!("{where_}: finishing COPY into {t}")))?;
    let mut manifest = store.manifest().clone();
    if let Some(encoder) = &opts.encoder {
        manifest.encoder = encoder.clone();
    }
    let manifest = serde_json::to_string(&manifest)
        .map_err(|e| Error::Invalid(format!("manifest of {}: {e}", store.dir().display())))?;
    tx.execute(
        &format!("INSERT INTO {t}_manifest (manifest) VALUES ($1::text::jsonb)"),
        &[&manifest],
    )
    .map_err(pg(format!("{where_}: storing the manifest")))?;
    tx.batch_execute(&format!("ALTER TABLE {t} ADD PRIMARY KEY (id)"))
        .map_err(pg(format!("{where_}: adding the primary key of {t}")))?;
    tx.commit().map_err(pg(format!("{where_}: COMMIT")))?;
    client
        .batch_execute(&format!("ANALYZE {t}"))
        .map_err(pg(format!("{where_}: ANALYZE {t}")))?;
    Ok(written)
}

/// A datastore held by a PostgreSQL server (see the module note).
pub struct PgStore {
    client: Mutex<Client>,
    url: PgUrl,
    manifest: Manifest,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.url.redacted())
            .field("manifest", &self.manifest)
            .finish()
    }
}

impl PgStore {
    /// Connects and reads the datastore's manifest; checks that the table holds `count` rows.
    ///
    /// Errors: bad URL; unreachable server; no datastore in that table.
    pub fn connect(url: &str) -> Result<Self> {
        let url = PgUrl::parse(url)?;
        let where_ = url.redacted();
        let mut client = connect(&url)?;
        let t = &url.table;
        let exists: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{t}_manifest")],
            )
            .map_err(pg(format!("{where_}: looking for table {t}_manifest")))?
            .get(0);
        if !exists {
            return Err(Error::Invalid(format!(
                "{where_}: no datastore here (table {t}_manifest does not exist); push one first"
            )));
        }
        let text: String = client
            .query_one(&format!("SELECT manifest::text FROM {t}_manifest"), &[])
            .map_err(pg(format!(
                "{where_}: reading {t}_manifest (one row expected)"
            )))?
            .get(0);
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!(
                "{where_}: {t}_manifest is not a datastore manifest: {e}"
            ))
        })?;
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .map_err(pg(format!("{where_}: counting the rows of {t}")))?
            .get(0);
        if rows as usize != manifest.count {
            return Err(Error::CountMismatch {
                what: format!("{where_}: table {t} vs its manifest"),
                vectors: rows as usize,
                captions: manifest.count,
            });
        }
        Ok(PgStore {
            client: Mutex::new(client),
            url,
            manifest,
        })
    }

    /// The manifest of the pushed store.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.manifest.dim
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.manifest.count
    }
    /// True when the store is empty.
    pub fn is_empty(&self) -> bool {
        self.manifest.count == 0
    }
    /// The table.
    pub fn table(&self) -> &str {
        &self.url.table
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        // a panic while holding the lock cannot leave the client in a state we rely on
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, queries: &[f32], query_dim: usize, k: usize) -> Result<usize> {
        let nq = check_queries(queries, query_dim, self.dim())?;
        if k == 0 {
            return Err(Error::Invalid("k must be at least 1".into()));
        }
        if k > self.len() {
            return Err(Error::KTooLarge {
                k,
                ntotal: self.len(),
            });
        }
        Ok(nq)
    }

    /// Exact inner-product top-k on the server: the ids of [`crate::Datastore::search`] and FAISS
    /// `IndexFlatIP` (module note), scores as pgvector computes them (f32).
    pub fn search(&self, queries: &[f32], query_dim: usize, k: usize) -> Result<Vec<Vec<Hit>>> {
        let nq = self.check(queries, query_dim, k)?;
        let where_ = self.url.redacted();
        let t = &self.url.table;
        let mut client = self.client();
        let mut tx = client
            .transaction()
            .map_err(pg(format!("{where_}: BEGIN")))?;
        tx.batch_execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
            .map_err(pg(format!("{where_}: SET")))?;
        let stmt = tx
            .prepare(&format!(
                "SELECT id, embedding <#> $1 AS d FROM {t} ORDER BY d, id LIMIT $2"
            ))
            .map_err(pg(format!("{where_}: preparing the search of {t}")))?;
        let limit = (2 * k).min(self.len()) as i64;
        let mut out = Vec::with_capacity(nq);
        for q in queries.chunks_exact(query_dim) {
            let v = Vector::from(q.to_vec());
            let rows = tx
                .query(&stmt, &[&v, &limit])
                .map_err(pg(format!("{where_}: searching {t}")))?;
            let cand: Vec<Hit> = rows
                .iter()
                .map(|r| (r.get::<_, i64>(0), -r.get::<_, f64>(1) as f32))
                .collect();
            out.push(faiss_result(cand, k));
        }
        tx.commit().map_err(pg(format!("{where_}: COMMIT")))?;
        Ok(out)
    }

    /// Creates (or replaces) the HNSW index of the table for approximate search
    /// (`USING hnsw (embedding vector_ip_ops) WITH (m, ef_construction)`; pgvector's defaults are
    /// 16 and 64).
    pub fn create_hnsw_index(&self, m: usize, ef_construction: usize) -> Result<()> {
        let where_ = self.url.redacted();
        let t = &self.url.table;
        self.client()
            .batch_execute(&format!(
                "DROP INDEX IF EXISTS {t}_hnsw; \
                 CREATE INDEX {t}_hnsw ON {t} USING hnsw (embedding vector_ip_ops) \
                 WITH (m = {m}, ef_construction = {ef_construction})"
            ))
            .map_err(pg(format!("{where_}: creating the HNSW index of {t}")))
    }

    /// True when the table has the HNSW index.
    pub fn has_hnsw_index(&self) -> Result<bool> {
        let where_ = self.url.redacted();
        let name = format!("{}_hnsw", self.url.table);
        Ok(self
            .client()
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .map_err(pg(format!("{where_}: looking for index {name}")))?
            .get(0))
    }

    /// Approximate top-k through the HNSW index, `ef_search` candidates per query (pgvector's
    /// default 40 when `None`; at least `k`), best first.
    ///
    /// Errors: the table has no HNSW index ([`PgStore::create_hnsw_index`]).
    pub fn search_approx(
        &self,
        queries: &[f32],
        query_dim: usize,
        k: usize,
        ef_search: Option<usize>,
    ) -> Result<Vec<Vec<Hit>>> {
        let nq = self.check(queries, query_dim, k)?;
        if !self.has_hnsw_index()? {
            return Err(Error::Invalid(format!(
                "{}: table {} has no HNSW index; create one first",
                self.url.redacted(),
                self.url.table
            )));
        }
        let where_ = self.url.redacted();
        let t = &self.url.table;
        let ef = ef_search.unwrap_or(40).max(k).min(1000);
        let mut client = self.client();
        let mut tx = client
            .transaction()
            .map_err(pg(format!("{where_}: BEGIN")))?;
        tx.batch_execute(&format!(
            "SET LOCAL enable_seqscan = off; SET LOCAL hnsw.ef_search = {ef}"
        ))
        .map_err(pg(format!("{where_}: SET")))?;
        let stmt = tx
            .prepare(&format!(
                "SELECT id, embedding <#> $1 AS d FROM {t} ORDER BY embedding <#> $1 LIMIT $2"
            ))
            .map_err(pg(format!("{where_}: preparing the search of {t}")))?;
        let mut out = Vec::with_capacity(nq);
        for q in queries.chunks_exact(query_dim) {
            let v = Vector::from(q.to_vec());
            let rows = tx
                .query(&stmt, &[&v, &(k as i64)])
                .map_err(pg(format!("{where_}: searching {t}")))?;
            out.push(
                rows.iter()
                    .map(|r| (r.get::<_, i64>(0), -r.get::<_, f64>(1) as f32))
                    .collect(),
            );
        }
        tx.commit().map_err(pg(format!("{where_}: COMMIT")))?;
        Ok(out)
    }

    /// The query plan the server uses for an approximate search (for checks that the HNSW index
    /// is used).
    pub fn explain_approx(&self, query: &[f32]) -> Result<String> {
        let where_ = self.url.redacted();
        let t = &self.url.table;
        let mut client = self.client();
        let mut tx = client
            .transaction()
            .map_err(pg(format!("{where_}: BEGIN")))?;
        tx.batch_execute("SET LOCAL enable_seqscan = off")
            .map_err(pg(format!("{where_}: SET")))?;
        let rows = tx
            .query(
                &format!("EXPLAIN SELECT id FROM {t} ORDER BY embedding <#> $1 LIMIT 4"),
                &[&Vector::from(query.to_vec())],
            )
            .map_err(pg(format!("{where_}: EXPLAIN")))?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// The captions of these ids, in the same order.
    ///
    /// Errors: an id not in the store.
    pub fn captions(&self, ids: &[i64]) -> Result<Vec<CaptionRecord>> {
        let where_ = self.url.redacted();
        let t = &self.url.table;
        let rows = self
            .client()
            .query(
                &format!("SELECT id, caption, image_id FROM {t} WHERE id = ANY($1)"),
                &[&ids],
            )
            .map_err(pg(format!("{where_}: reading captions from {t}")))?;
        let found: std::collections::HashMap<i64, CaptionRecord> = rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    CaptionRecord {
                        text: r.get(1),
                        image_id: r.get(2),
                    },
                )
            })
            .collect();
        ids.iter()
            .map(|id| {
                found.get(id).cloned().ok_or_else(|| {
                    Error::Invalid(format!(
                        "{where_}: caption id {id} is not in table {t} ({} entries)",
                        self.len()
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u =
            PgUrl::parse("postgres://me:secret@db:5433/caps?table=coco&sslmode=disable").unwrap();
        assert_eq!(u.conn, "postgres://me:secret@db:5433/caps?sslmode=disable");
        assert_eq!(u.table, "coco");
        assert_eq!(
            u.redacted(),
            "postgres://me:***@db:5433/caps?sslmode=disable&table=coco"
        );
        let u = PgUrl::parse("postgresql://me@db/caps").unwrap();
        assert_eq!(
            (u.conn.as_str(), u.table.as_str()),
            ("postgresql://me@db/caps", DEFAULT_TABLE)
        );
        for bad in [
            "http://db/caps",
            "postgres://db/caps?table=Coco",
            "postgres://db/caps?table=1abc",
            "postgres://db/caps?table=a;drop",
            "postgres://db/caps?table=a&table=b",
            "postgres://db/caps?sslmode",
        ] {
            let e = PgUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("datastore URL"), "{bad}: {e}");
        }
        let e = PgUrl::parse("postgres://u:pw@h/d?table=X")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw") && e.contains("u:***@h"), "{e}");
    }
}
