//! The configurations shipped for docker-compose load and validate.

use std::path::Path;

#[test]
fn compose_configs_are_valid() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose");
    for i in 1..=3 {
        let meta = cairn_metad::Config::load(&dir.join(format!("metad{i}.toml")))?;
        assert_eq!(meta.id, i);
        assert_eq!(meta.members().len(), 3);
        let data = cairn_datad::Config::load(&dir.join(format!("datad{i}.toml")))?;
        assert_eq!(data.meta.len(), 3);
    }
    Ok(())
}
