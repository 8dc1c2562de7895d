"""The storage provider: a shard store (:mod:`.store`), its HTTP server (:mod:`.server`) and the
daemon that follows the chain, proves, takes and rebuilds re-listed shards (:mod:`.daemon`); see
docs/spec/storage.md §5 and §6."""
