/* The kernel types sockdoctor's BPF programs read: a trimmed vmlinux.h.
 *
 * Only the fields the programs use, each struct marked preserve_access_index:
 * clang records every field access as a CO-RE relocation and libbpf rewrites
 * the offsets at load time from the running kernel's BTF
 * (/sys/kernel/btf/vmlinux). So the layout written here does not have to
 * match any kernel; the names do. Anonymous unions of the kernel's structs are
 * matched through: `skc_daddr` here is found inside sock_common's unions.
 */
#ifndef SOCKDOCTOR_VMLINUX_H
#define SOCKDOCTOR_VMLINUX_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
typedef __u32 uid_t;

enum { false = 0, true = 1 };

/* The map types and update flags the programs name (uapi linux/bpf.h). */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
};
enum { BPF_ANY = 0, BPF_NOEXIST = 1, BPF_EXIST = 2 };

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
};

struct task_struct {
	int pid;
	int tgid;
};

struct super_block {
	unsigned long s_magic;
};

struct inode {
	unsigned short i_mode;
	unsigned long i_ino;
	struct super_block *i_sb;
};

struct file {
	struct inode *f_inode;
};

/* iter/task_file's context: called once per open file of every task, and
 * once more with task == NULL when the walk is complete. */
struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
};

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
};

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct sock {
	struct sock_common __sk_common;
};

struct tcp_sock;

/* iter/tcp's context: once per socket of the iterating process's network
 * namespace (listening, established, TIME-WAIT and request sockets). */
struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	uid_t uid;
};

#pragma clang attribute pop

#endif
