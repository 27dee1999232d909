//! Marks the build when the tests may use what a machine may lack, so those tests run
//! instead of being listed as ignored ("not tested"): a PostgreSQL server
//! (`HAIL_TEST_POSTGRES_URL`) and a browser (`HAIL_TEST_BROWSER`, set by `scripts/test`
//! once Chromium and ChromeDriver are installed).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hail_test_postgres)");
    println!("cargo::rustc-check-cfg=cfg(hail_test_browser)");
    println!("cargo::rerun-if-env-changed=HAIL_TEST_POSTGRES_URL");
    println!("cargo::rerun-if-env-changed=HAIL_TEST_BROWSER");
    println!("cargo::rerun-if-changed=build.rs");
    let set = |name: &str| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    if set("HAIL_TEST_POSTGRES_URL") {
        println!("cargo::rustc-cfg=hail_test_postgres");
    }
    if set("HAIL_TEST_BROWSER") {
        println!("cargo::rustc-cfg=hail_test_browser");
    }
}
