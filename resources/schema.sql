-- The archive database. Tables seen through TAP as schema.table are stored as schema_table
-- (SQLite has no schemas); the ADQL layer maps the names. Latent columns z<i>, z<i>_var of
-- ml_latent are added by the archive for the largest latent size in use.

CREATE TABLE IF NOT EXISTS archive_setting (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per spectrum: where it lives, its metadata and its physical labels.
CREATE TABLE IF NOT EXISTS spectrum (
    row_id            INTEGER PRIMARY KEY,
    obs_publisher_did TEXT NOT NULL UNIQUE,
    obs_id            TEXT NOT NULL,
    obs_collection    TEXT NOT NULL,
    target_name       TEXT,
    s_ra              REAL,
    s_dec             REAL,
    t_min             REAL,
    t_max             REAL,
    t_exptime         REAL,
    em_min            REAL NOT NULL,
    em_max            REAL NOT NULL,
    em_res_power      REAL,
    em_xel            INTEGER NOT NULL,
    medium            TEXT NOT NULL,
    flux_unit         TEXT,
    instrument_name   TEXT,
    source_path       TEXT NOT NULL,
    source_format     TEXT NOT NULL,
    source_index      INTEGER NOT NULL,
    source_sha256     TEXT NOT NULL,
    access_estsize    INTEGER,
    teff              REAL,
    logg              REAL,
    feh               REAL,
    rv                REAL,
    snr               REAL,
    vsini             REAL,
    airmass           REAL,
    extra_labels      TEXT,
    ingested_at       TEXT NOT NULL,
    target_class      TEXT,   -- the temperature class (O, B, A, F, G, K, M ...) where the source gives one
    spectral_type     TEXT    -- the full spectral type as the source writes it (K1IV, sdB ...)
);
CREATE INDEX IF NOT EXISTS spectrum_collection ON spectrum (obs_collection);
CREATE INDEX IF NOT EXISTS spectrum_source ON spectrum (source_path, source_index);
-- Cone searches narrow by declination and right ascension from the index alone, no row read.
DROP INDEX IF EXISTS spectrum_dec;
CREATE INDEX IF NOT EXISTS spectrum_sky ON spectrum (s_dec, s_ra);

-- ObsCore 1.1 view (described in resources/tables/ivoa.toml, which TAP_SCHEMA is made from).
-- access_url points at DataLink under the configured public base URL, with the DID
-- URL-encoded (DIDs hold only ivo://, ~, ?, / and [A-Za-z0-9._+-]; a raw '+' would read as a
-- space). s_fov and s_region stay NULL: the archive records no aperture, and an invented one
-- would make spatial overlaps lie; positional queries use POINT(s_ra, s_dec). The physical
-- labels follow the standard columns so ADQL can filter on them.
-- service/tap/schema.py re-creates this view when it refreshes TAP_SCHEMA (`latentvo index`),
-- so an archive built by an older release gets the current column set.
CREATE VIEW IF NOT EXISTS ivoa_obscore AS
SELECT
    'spectrum'                       AS dataproduct_type,
    NULL                             AS dataproduct_subtype,
    2                                AS calib_level,
    s.obs_collection                 AS obs_collection,
    s.obs_id                         AS obs_id,
    s.obs_publisher_did              AS obs_publisher_did,
    COALESCE(s.target_name, s.obs_id) || ' (' || s.obs_collection || ')' AS obs_title,
    (SELECT value FROM archive_setting WHERE name = 'base_url')
        || '/datalink/links?ID='
        || replace(replace(replace(replace(s.obs_publisher_did,
               '+', '%2B'), ':', '%3A'), '/', '%2F'), '?', '%3F') AS access_url,
    'application/x-votable+xml;content=datalink' AS access_format,
    s.access_estsize                 AS access_estsize,
    s.target_name                    AS target_name,
    s.target_class                   AS target_class,
    s.s_ra                           AS s_ra,
    s.s_dec                          AS s_dec,
    NULL                             AS s_fov,
    NULL                             AS s_region,
    NULL                             AS s_resolution,
    1                                AS s_xel1,
    1                                AS s_xel2,
    NULL                             AS s_calib_status,
    s.t_min                          AS t_min,
    s.t_max                          AS t_max,
    s.t_exptime                      AS t_exptime,
    s.t_exptime                      AS t_resolution,
    1                                AS t_xel,
    s.em_min                         AS em_min,
    s.em_max                         AS em_max,
    s.em_res_power                   AS em_res_power,
    s.em_xel                         AS em_xel,
    'em.wl'                          AS em_ucd,
    'phot.flux.density;em.wl'        AS o_ucd,
    NULL                             AS pol_states,
    NULL                             AS pol_xel,
    NULL                             AS facility_name,
    s.instrument_name                AS instrument_name,
    s.teff                           AS teff,
    s.logg                           AS logg,
    s.feh                            AS feh,
    s.rv                             AS rv,
    s.snr                            AS snr,
    s.vsini                          AS vsini,
    s.spectral_type                  AS spectral_type
FROM spectrum AS s;

CREATE TABLE IF NOT EXISTS ml_model (
    model_version      INTEGER PRIMARY KEY,
    created            TEXT NOT NULL,
    stage              TEXT NOT NULL,   -- trained, encoded, analysed, indexed
    is_current         INTEGER NOT NULL DEFAULT 0,
    directory          TEXT NOT NULL,
    training_set_hash  TEXT NOT NULL,
    n_train            INTEGER NOT NULL,
    grid_wave_min      REAL NOT NULL,   -- vacuum Angstrom
    grid_wave_max      REAL NOT NULL,
    grid_n_pixels      INTEGER NOT NULL,
    latent_dim         INTEGER NOT NULL,
    kl_weight          REAL NOT NULL,
    informative_dims   TEXT,            -- space-separated dimension numbers
    recon_rmse         REAL,
    index_n_trees      INTEGER,
    index_search_k     INTEGER,
    index_recall_at_10 REAL,
    metrics            TEXT             -- JSON
);

CREATE TABLE IF NOT EXISTS ml_latent (
    obs_publisher_did TEXT NOT NULL,
    model_version     INTEGER NOT NULL REFERENCES ml_model (model_version),
    row_index         INTEGER NOT NULL,
    recon_error       REAL,
    lof_score         REAL,
    anomaly_score     REAL,
    PRIMARY KEY (model_version, obs_publisher_did),
    UNIQUE (model_version, row_index)
);
-- A spectrum's rows of every version: a reference looked up by DID alone (ADQL, VECTORMATH),
-- which PostgreSQL cannot find through the primary key (SQLite skip-scans it).
CREATE INDEX IF NOT EXISTS ml_latent_did ON ml_latent (obs_publisher_did);

-- Mutual information (nats) and correlations between latent dimension and label, with the
-- same figures for principal component number `dim` of a PCA of equal size.
CREATE TABLE IF NOT EXISTS ml_label_correlation (
    model_version INTEGER NOT NULL REFERENCES ml_model (model_version),
    dim           INTEGER NOT NULL,
    label         TEXT NOT NULL,
    informative   INTEGER NOT NULL,
    mi            REAL,
    mi_error      REAL,
    pearson       REAL,
    spearman      REAL,
    pca_mi        REAL,
    pca_mi_error  REAL,
    pca_pearson   REAL,
    pca_spearman  REAL,
    n_spectra     INTEGER,
    PRIMARY KEY (model_version, dim, label)
);

-- A 2-D map of the archive per model version: each spectrum's place in a projection of the
-- similarity dimensions (method 'pca' always; 'umap' when umap-learn is installed), for the
-- explorer's map page and for anyone who wants to plot the archive.
CREATE TABLE IF NOT EXISTS ml_map (
    model_version     INTEGER NOT NULL REFERENCES ml_model (model_version),
    method            TEXT NOT NULL,
    obs_publisher_did TEXT NOT NULL,
    row_index         INTEGER NOT NULL,
    x                 REAL NOT NULL,
    y                 REAL NOT NULL,
    PRIMARY KEY (model_version, method, obs_publisher_did)
);
CREATE INDEX IF NOT EXISTS ml_map_row ON ml_map (model_version, method, row_index);

-- == UWS jobs ==
-- UWS 1.1 jobs: TAP asynchronous queries (/tap/async), label propagation (/ml/propagate),
-- training (/ml/train). Written only by the service (service/uws/jobs.py runs this section on
-- its own read-write connection, so archives built before it existed get the table too); never
-- published in TAP_SCHEMA. Instants are UTC text YYYY-MM-DDThh:mm:ss.fffZ (fixed width: they
-- sort as text).
CREATE TABLE IF NOT EXISTS uws_job (
    job_id             TEXT PRIMARY KEY,
    run_id             TEXT,
    phase              TEXT NOT NULL,
    creation_time      TEXT NOT NULL,
    start_time         TEXT,
    end_time           TEXT,
    -- seconds the job may run (0 = unlimited)
    execution_duration INTEGER NOT NULL,
    destruction        TEXT NOT NULL,
    -- {NAME: [values]} as JSON; inline uploads are files in <root>/jobs/<job_id>/uploads/
    parameters         TEXT NOT NULL,
    error_type         TEXT,
    error_message      TEXT,
    result_mime        TEXT,
    result_size        INTEGER,
    -- host:pid of the process running the job, and when it last said it still does (unix s)
    runner             TEXT,
    heartbeat          REAL,
    -- what the job does: tap (also when NULL: jobs stored before kinds), propagate, train
    kind               TEXT,
    -- the work's last progress report as JSON (the job document's jobInfo)
    job_info           TEXT
);
CREATE INDEX IF NOT EXISTS uws_job_phase ON uws_job (phase);
CREATE INDEX IF NOT EXISTS uws_job_creation ON uws_job (creation_time);
CREATE INDEX IF NOT EXISTS uws_job_destruction ON uws_job (destruction);

-- Label sets of the active-learning page (/explore/label): answers an astronomer gives, saved as
-- each is given under an unguessable id, and kept like jobs (until their destruction time, which
-- every answer moves on; removed by the job reaper).
CREATE TABLE IF NOT EXISTS label_set (
    set_id            TEXT PRIMARY KEY,
    created           TEXT NOT NULL,
    destruction       TEXT NOT NULL,
    -- the classes offered, as a JSON list of names
    classes           TEXT NOT NULL,
    -- propagation runs started from the set, and the URL of the last one's job
    rounds            INTEGER NOT NULL,
    last_job          TEXT
);
CREATE TABLE IF NOT EXISTS label_answer (
    set_id            TEXT NOT NULL REFERENCES label_set (set_id) ON DELETE CASCADE,
    obs_publisher_did TEXT NOT NULL,
    -- one of the classes of the set, or "not sure", or "bad"
    label             TEXT NOT NULL,
    answered          TEXT NOT NULL,
    PRIMARY KEY (set_id, obs_publisher_did)
);
