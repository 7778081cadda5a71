package sqlstore

// Rebind rewrites a query written with '?' placeholders for d (to $1, $2
// on PostgreSQL), so that packages keeping their own tables next to the
// store's write their SQL once for both engines. The query must not hold
// '?' inside string literals.
func (d Dialect) Rebind(query string) string { return q{d: &d}.sql(query) }

// SQLDialect returns the engine description the store was opened with,
// for packages that run their own SQL on [DB.SQL].
func (s *DB) SQLDialect() Dialect { return *s.d }
