//! Marks the build when a PostgreSQL server is named for the tests, so the PostgreSQL half
//! of the integration suite runs instead of being listed as ignored ("not tested").

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hail_test_postgres)");
    println!("cargo::rerun-if-env-changed=HAIL_TEST_POSTGRES_URL");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("HAIL_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=hail_test_postgres");
    }
}
