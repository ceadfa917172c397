// SPDX-License-Identifier: GPL-2.0
/* Socket owners: every open socket descriptor of every process, one pass.
 *
 * The kernel walks each task's file table; for a socket file we emit
 * (tgid, fd, inode), the same facts as readlink(/proc/PID/fd/N) =
 * "socket:[inode]" but without a path lookup per descriptor. Threads are
 * skipped (one file table per thread group, as /proc/PID/fd shows it). After
 * each process we emit its number of open descriptors: fd -1, inode = count.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define SOCKFS_MAGIC 0x534F434B
#define S_IFMT 00170000
#define S_IFSOCK 0140000

struct record {
	__u32 tgid;
	__s32 fd;
	__u64 inode;
};

/* The thread group being counted (one program run at a time per load). */
static __u32 current_tgid;
static __u64 current_count;

static void flush(struct seq_file *seq)
{
	struct record r = { .tgid = current_tgid, .fd = -1, .inode = current_count };

	if (current_tgid)
		bpf_seq_write(seq, &r, sizeof(r));
	current_tgid = 0;
	current_count = 0;
}

SEC("iter/task_file")
int socket_owners(struct bpf_iter__task_file *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct inode *inode;
	struct record r;
	__u32 tgid;

	if (!task || !file) {
		flush(seq); /* the walk is complete */
		return 0;
	}
	tgid = task->tgid;
	if (task->pid != tgid)
		return 0; /* a thread: its group's leader lists the shared table */
	if (tgid != current_tgid) {
		flush(seq);
		current_tgid = tgid;
	}
	current_count++;
	inode = file->f_inode;
	if (!inode || (inode->i_mode & S_IFMT) != S_IFSOCK || inode->i_sb->s_magic != SOCKFS_MAGIC)
		return 0; /* not a socket (an O_PATH descriptor of a socket file is not either) */
	r.tgid = tgid;
	r.fd = ctx->fd;
	r.inode = inode->i_ino;
	bpf_seq_write(seq, &r, sizeof(r));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
