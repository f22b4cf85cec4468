package accounts

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// LifecycleStore is what Lifecycle needs of the store; *Store has it.
type LifecycleStore interface {
	SetBlocked(ctx context.Context, address string, blocked bool) error
	Delete(ctx context.Context, address string, tombstone []byte) error
	MailPending(ctx context.Context, tombstone []byte) (bool, error)
	MailRemoved(ctx context.Context, tombstone []byte) error
	HasTombstone(ctx context.Context, tombstone []byte) (bool, error)
	Get(ctx context.Context, address string) (*Account, error)
	Stats(ctx context.Context) (Stats, error)
	Each(ctx context.Context, fn func(*Account) error) error
}

// Lifecycle is what an administrator does to accounts: block, unblock,
// delete, list and count. The admin CLI and the admin API are thin over it.
// Addresses are normalized here; errors never name them.
type Lifecycle struct {
	Store LifecycleStore
	// Key keys the tombstones that deletions leave.
	Key TombstoneKey
	// Kick ends the account's open sessions (doveadm kick); an account
	// without sessions is not an error.
	Kick func(ctx context.Context, address string) error
	// RemoveMail removes all of the account's mail; mail that is already
	// gone is not an error. See RemoveMaildir.
	RemoveMail func(ctx context.Context, address string) error
	// ListMail lists the addresses that have mail on disk, for Sweep. See
	// ListMaildirs.
	ListMail func(ctx context.Context) ([]string, error)
}

// ErrNotKicked says the account was blocked but its open sessions were
// not ended.
var ErrNotKicked = errors.New("blocked, but open sessions were not ended")

func normalize(addr string) (string, error) {
	norm, _, _, err := Normalize(addr)
	return norm, err
}

// Block refuses the account's logins from now on: doveauth's passdb and
// Postfix's per-message sender check read the flag (every cache is told in
// the same transaction), and the open sessions are kicked.
func (l *Lifecycle) Block(ctx context.Context, addr string) error {
	addr, err := normalize(addr)
	if err != nil {
		return err
	}
	if err := l.Store.SetBlocked(ctx, addr, true); err != nil {
		return err
	}
	if err := l.Kick(ctx, addr); err != nil {
		return fmt.Errorf("%w: %w", ErrNotKicked, err)
	}
	return nil
}

// Unblock allows the account's logins again.
func (l *Lifecycle) Unblock(ctx context.Context, addr string) error {
	addr, err := normalize(addr)
	if err != nil {
		return err
	}
	return l.Store.SetBlocked(ctx, addr, false)
}

// Delete removes the account and all its mail, and leaves a tombstone that
// refuses the address to every later registration.
//
// The steps: block and kick, so that nothing uses the account any more;
// delete the row and write the tombstone, with its mail pending removal,
// in one transaction that also tells doveauth's caches (no waiting on a
// cache lifetime); remove the mail; mark the tombstone's mail removed. If
// it stops after the row is gone, the pending tombstone still refuses the
// address at any age, and calling Delete again finishes the removal.
func (l *Lifecycle) Delete(ctx context.Context, addr string) error {
	addr, err := normalize(addr)
	if err != nil {
		return err
	}
	tomb := l.Key.Hash(addr)
	err = l.Store.SetBlocked(ctx, addr, true)
	if errors.Is(err, ErrNotFound) {
		return l.finishDelete(ctx, addr, tomb)
	}
	if err != nil {
		return err
	}
	if err := l.Kick(ctx, addr); err != nil {
		return fmt.Errorf("%w, not deleted: %w", ErrNotKicked, err)
	}
	err = l.Store.Delete(ctx, addr, tomb)
	if errors.Is(err, ErrNotFound) {
		// Deleted concurrently; finish what that deletion may not have.
		return l.finishDelete(ctx, addr, tomb)
	}
	if err != nil {
		return err
	}
	return l.removeMail(ctx, addr, tomb)
}

// finishDelete removes the mail of an account whose row is gone but whose
// tombstone says its mail is not; without such a tombstone the account
// does not exist.
func (l *Lifecycle) finishDelete(ctx context.Context, addr string, tomb []byte) error {
	pending, err := l.Store.MailPending(ctx, tomb)
	if err != nil {
		return err
	}
	if !pending {
		return ErrNotFound
	}
	return l.removeMail(ctx, addr, tomb)
}

func (l *Lifecycle) removeMail(ctx context.Context, addr string, tomb []byte) error {
	if err := l.RemoveMail(ctx, addr); err != nil {
		return fmt.Errorf("account deleted, but its mail was not (delete it again to finish): %w", err)
	}
	if err := l.Store.MailRemoved(ctx, tomb); err != nil {
		return fmt.Errorf("account and mail deleted, but the tombstone was not updated (delete it again to finish): %w", err)
	}
	return nil
}

// Sweep removes the mail of deleted accounts that reappeared after Delete
// removed it: a delivery already past its lookup when the account went, or
// a doveauth that missed the deletion's notification for up to its cache
// lifetime, writes into a new mail directory. Mail of an address with a
// tombstone and no account is removed; an address without a tombstone is
// left alone, whatever it is. Deleting waits for nothing; run Sweep now and
// then instead (deploy/systemd/chatmail-admin-sweep.timer, hourly), which
// also keeps such mail from a later registrant once a finite
// tombstone_lifetime has passed. It returns how many it removed.
func (l *Lifecycle) Sweep(ctx context.Context) (int, error) {
	addrs, err := l.ListMail(ctx)
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, a := range addrs {
		addr, err := normalize(a)
		if err != nil || addr != a {
			continue // not a directory doveauth would have named
		}
		if _, err := l.Store.Get(ctx, addr); !errors.Is(err, ErrNotFound) {
			if err != nil {
				return removed, err
			}
			continue // an account: its mail
		}
		dead, err := l.Store.HasTombstone(ctx, l.Key.Hash(addr))
		if err != nil {
			return removed, err
		}
		if !dead {
			continue
		}
		if err := l.RemoveMail(ctx, addr); err != nil {
			return removed, err
		}
		removed++
	}
	return removed, nil
}

// Stats returns usage totals.
func (l *Lifecycle) Stats(ctx context.Context) (Stats, error) { return l.Store.Stats(ctx) }

// Each calls fn for every account, in address order.
func (l *Lifecycle) Each(ctx context.Context, fn func(*Account) error) error {
	return l.Store.Each(ctx, fn)
}

// ListMaildirs returns a Lifecycle.ListMail that lists the entries of dir,
// the accounts' homes. Its errors do not name the entries.
func ListMaildirs(dir string) func(ctx context.Context) ([]string, error) {
	return func(context.Context) ([]string, error) {
		if dir == "" {
			return nil, errors.New("accounts.mailboxes_dir is not set")
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		names := make([]string, 0, len(entries))
		for _, e := range entries {
			if e.IsDir() {
				names = append(names, e.Name())
			}
		}
		return names, nil
	}
}

// RemoveMaildir returns a Lifecycle.RemoveMail that removes the account's
// home, <dir>/<address>, with everything in it. Its errors do not name the
// path, which holds the address.
func RemoveMaildir(dir string) func(ctx context.Context, address string) error {
	return func(_ context.Context, address string) error {
		if dir == "" {
			return errors.New("accounts.mailboxes_dir is not set")
		}
		err := os.RemoveAll(filepath.Join(dir, address))
		if pe, ok := errors.AsType[*fs.PathError](err); ok {
			return fmt.Errorf("removing the mail directory: %s: %w", pe.Op, pe.Err)
		}
		return err
	}
}
