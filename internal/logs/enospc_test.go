package logs

import "syscall"

var syscallENOSPC error = syscall.ENOSPC
