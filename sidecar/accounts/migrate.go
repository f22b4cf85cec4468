package accounts

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the advisory lock key that serializes migrations when
// several daemons start at once.
const migrationLock = 0x63686174 // "chat"

// ErrSchemaNewer means the database was migrated by a newer program: this
// one does not know its schema and must not use it.
var ErrSchemaNewer = errors.New("database schema is newer than this program")

// migration is one embedded schema change, numbered by its file name
// ("NNN_what.sql").
type migration struct {
	version int
	name    string
	body    string
}

// readMigrations lists the migrations of fsys in version order.
func readMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	seen := map[int]string{}
	for _, name := range names {
		base := path.Base(name)
		v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("bad migration name %q", base)
		}
		if other, ok := seen[v]; ok {
			return nil, fmt.Errorf("migrations %q and %q have the same number", other, base)
		}
		seen[v] = base
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{v, base, string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// Migrate applies the migrations not yet applied, each in its own
// transaction. A database migrated further than this program knows is
// ErrSchemaNewer.
func (s *Store) Migrate(ctx context.Context) error {
	ms, err := readMigrations(migrations)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLock); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, migrationLock)
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var applied int
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&applied); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if known := ms[len(ms)-1].version; applied > known {
		return fmt.Errorf("%w: the database is at version %d, this program knows up to %d; run the newer program", ErrSchemaNewer, applied, known)
	}
	for _, m := range ms {
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING`, m.version)
			if err != nil || tag.RowsAffected() == 0 {
				return err
			}
			_, err = tx.Exec(ctx, m.body)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate: %s: %w", m.name, err)
		}
	}
	return nil
}

// MigrateRetrying runs Migrate until it succeeds, retrying with growing
// delays (up to 5 s) while PostgreSQL is down or another daemon holds the
// migration lock, so that a daemon can start before its database and
// answer "try again later" meanwhile. It reports whether the schema is in
// place; false when ctx ended first.
func (s *Store) MigrateRetrying(ctx context.Context, log *slog.Logger) bool {
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
		err := s.Migrate(ctx)
		if err == nil {
			log.Info("account store ready")
			return true
		}
		if errors.Is(err, ErrSchemaNewer) {
			// Not transient: the admin has to run the newer release.
			log.Error("account store unusable, retrying", "err", err, "delay", delay)
		} else {
			log.Warn("account store not ready, retrying", "err", err, "delay", delay)
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
	}
}
