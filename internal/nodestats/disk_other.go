//go:build !(linux || darwin || freebsd)

package nodestats

import "errors"

func diskSpace(dir, serverVersion string) (free, total int64, err error) {
	return 0, 0, errors.New("free space is not read on this platform")
}
