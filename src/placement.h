/* placement.h — which CPUs the sync thread runs on: in durable mode, the
 * CPUs that take the interrupts of the disk holding the home, when they
 * are only some of those the process may use. */
#pragma once

#include <glib.h>
#include <sched.h>
#include <sys/types.h>

/* Parses a kernel CPU list ("0-3,8,10-11", as in /proc/irq/N/
 * effective_affinity_list) into set; FALSE if it is malformed. */
gboolean mcq_cpu_list_parse (const char *text, cpu_set_t *set);

/* Formats set as a CPU list ("0-3,8"). */
char *mcq_cpu_list_format (const cpu_set_t *set);

/* The CPUs that take the interrupts of the device behind block device
 * major:minor: the parent device in sysfs that has MSI interrupts, and
 * each one's effective affinity read under procfs.  sysfs and procfs are
 * the mount points ("/sys", "/proc"; a test passes a tree of its own).
 * FALSE with error when there is no such device (a virtual or unknown
 * disk) or nothing can be read; *device names it ("0000:00:02.0"). */
gboolean mcq_disk_irq_cpus (const char *sysfs, const char *procfs, guint major, guint minor,
                            cpu_set_t *cpus, char **device, GError **error);

/* The allowed CPUs that take interrupts into out; FALSE (out untouched)
 * when there are none, or when they are all the allowed ones (nothing to
 * choose). */
gboolean mcq_placement_choose (const cpu_set_t *allowed, const cpu_set_t *irq, cpu_set_t *out);

/* Binds the calling thread to the CPUs that take the interrupts of the
 * disk holding dir, if that narrows anything; says what it did at info
 * level (debug when it did nothing). */
void mcq_placement_apply (const char *dir);
