package supervisor

import "syscall"

// procAttr puts an instance in its own process group, so a Ctrl-C in the
// terminal reaches only the runner, which then stops instances in order, and
// has the kernel stop it should the runner die.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
