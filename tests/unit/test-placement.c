/* test-placement.c — unit tests of the CPU placement (src/placement.c):
 * CPU lists, the walk from a block device to its interrupts in a sysfs
 * and procfs tree made here, and the choice of CPUs for the sync thread. */
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>
#include "placement.h"

/* Removes a tree made by a test; symbolic links are removed, never
 * followed (the tree links into itself, like sysfs). */
static void
remove_tree (const char *path)
{
  if (!g_file_test (path, G_FILE_TEST_IS_SYMLINK) && g_file_test (path, G_FILE_TEST_IS_DIR))
    {
      g_autoptr(GDir) dir = g_dir_open (path, 0, NULL);
      const char *name;

      while (dir != NULL && (name = g_dir_read_name (dir)) != NULL)
        {
          g_autofree char *child = g_build_filename (path, name, NULL);
          remove_tree (child);
        }
    }
  g_assert_cmpint (g_remove (path), ==, 0);
}

static cpu_set_t
cpus (const char *list)
{
  cpu_set_t set;
  g_assert_true (mcq_cpu_list_parse (list, &set));
  return set;
}

static void
test_cpu_list (void)
{
  cpu_set_t set;
  g_autofree char *text = NULL;

  set = cpus ("0-3,8\n");
  g_assert_cmpint (CPU_COUNT (&set), ==, 5);
  g_assert_true (CPU_ISSET (3, &set) && CPU_ISSET (8, &set) && !CPU_ISSET (4, &set));
  text = mcq_cpu_list_format (&set);
  g_assert_cmpstr (text, ==, "0-3,8");
  g_clear_pointer (&text, g_free);
  set = cpus ("1");
  text = mcq_cpu_list_format (&set);
  g_assert_cmpstr (text, ==, "1");

  const char *bad[] = { "", "\n", "3-1", "a", "1,", "5-", "-2", "1 2", "99999", NULL };
  for (guint i = 0; bad[i] != NULL; i++)
    g_assert_false (mcq_cpu_list_parse (bad[i], &set));
  g_assert_false (mcq_cpu_list_parse (NULL, &set));
}

static void
test_choose (void)
{
  cpu_set_t all = cpus ("0-3"), some = cpus ("1,3,9"), out = cpus ("5");

  g_assert_true (mcq_placement_choose (&all, &some, &out));
  g_autofree char *text = mcq_cpu_list_format (&out);
  g_assert_cmpstr (text, ==, "1,3");
  /* Interrupts on every allowed CPU, or on none of them: nothing to do. */
  cpu_set_t before = out;
  g_assert_false (mcq_placement_choose (&all, &all, &out));
  cpu_set_t other = cpus ("4-7");
  g_assert_false (mcq_placement_choose (&all, &other, &out));
  g_assert_true (CPU_EQUAL (&out, &before));
}

/* A sysfs and procfs tree: a disk (major 254) with partition 1 on a PCI
 * function with two interrupts, a device-mapper disk (253:0) with none,
 * a disk (259:0) with an interrupt per CPU, and a disk (8:0) on a
 * controller with legacy interrupts behind a root port that has MSI ones. */
static char *
make_tree (void)
{
  g_autoptr(GError) error = NULL;
  char *root = g_dir_make_tmp ("mcq-placement-XXXXXX", &error);
  g_assert_no_error (error);
  const char *dirs[] = {
    "sys/dev/block",
    "sys/devices/pci0000:00/0000:00:02.0/msi_irqs",
    "sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda/vda1",
    "sys/devices/virtual/block/dm-0",
    "sys/devices/pci0000:00/0000:00:04.0/msi_irqs",
    "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1",
    "sys/devices/pci0000:00/0000:00:1c.0/msi_irqs",
    "sys/devices/pci0000:00/0000:00:1c.0/0000:01:00.0/host0/target0:0:0/0:0:0:0/block/sda",
    "sys/bus/pci",
    "proc/irq/35", "proc/irq/36", "proc/irq/40", "proc/irq/41", "proc/irq/50", NULL };
  for (guint i = 0; dirs[i] != NULL; i++)
    {
      g_autofree char *p = g_build_filename (root, dirs[i], NULL);
      g_assert_cmpint (g_mkdir_with_parents (p, 0755), ==, 0);
    }
  const char *files[][2] = {
    { "sys/devices/pci0000:00/0000:00:02.0/msi_irqs/35", "msix\n" },
    { "sys/devices/pci0000:00/0000:00:02.0/msi_irqs/36", "msix\n" },
    { "proc/irq/35/effective_affinity_list", "1\n" },
    /* An empty effective list: the configured one is read. */
    { "proc/irq/36/effective_affinity_list", "\n" },
    { "proc/irq/36/smp_affinity_list", "1\n" },
    /* The root port's own interrupt, not the disk's. */
    { "sys/devices/pci0000:00/0000:00:1c.0/msi_irqs/50", "msi\n" },
    { "proc/irq/50/effective_affinity_list", "0\n" },
    { "sys/devices/pci0000:00/0000:00:04.0/msi_irqs/40", "msix\n" },
    { "sys/devices/pci0000:00/0000:00:04.0/msi_irqs/41", "msix\n" },
    { "proc/irq/40/effective_affinity_list", "0\n" },
    { "proc/irq/41/effective_affinity_list", "1\n" },
  };
  for (guint i = 0; i < G_N_ELEMENTS (files); i++)
    {
      g_autofree char *p = g_build_filename (root, files[i][0], NULL);
      g_assert_true (g_file_set_contents (p, files[i][1], -1, NULL));
    }
  const char *links[][2] = {
    { "254:0", "../../devices/pci0000:00/0000:00:02.0/virtio1/block/vda" },
    { "254:1", "../../devices/pci0000:00/0000:00:02.0/virtio1/block/vda/vda1" },
    { "253:0", "../../devices/virtual/block/dm-0" },
    { "259:0", "../../devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1" },
    { "8:0", "../../devices/pci0000:00/0000:00:1c.0/0000:01:00.0/host0/target0:0:0/0:0:0:0/block/sda" },
  };
  for (guint i = 0; i < G_N_ELEMENTS (links); i++)
    {
      g_autofree char *p = g_build_filename (root, "sys/dev/block", links[i][0], NULL);
      g_assert_cmpint (symlink (links[i][1], p), ==, 0);
    }
  /* Which devices are PCI functions, as sysfs says with a link. */
  const char *pci[] = { "0000:00:02.0", "0000:00:04.0", "0000:00:1c.0", "0000:00:1c.0/0000:01:00.0" };
  for (guint i = 0; i < G_N_ELEMENTS (pci); i++)
    {
      g_autofree char *p = g_build_filename (root, "sys/devices/pci0000:00", pci[i], "subsystem", NULL);
      g_autofree char *up = g_strnfill (strchr (pci[i], '/') ? 4 : 3, 'x');
      GString *target = g_string_new (NULL);
      for (guint k = 0; up[k] != '\0'; k++)
        g_string_append (target, "../");
      g_string_append (target, "bus/pci");
      g_assert_cmpint (symlink (target->str, p), ==, 0);
      g_string_free (target, TRUE);
    }
  return root;
}

static void
test_disk_irqs (void)
{
  g_autofree char *root = make_tree ();
  g_autofree char *sys = g_build_filename (root, "sys", NULL);
  g_autofree char *proc = g_build_filename (root, "proc", NULL);
  cpu_set_t set, allowed = cpus ("0-1"), chosen;

  for (guint minor = 0; minor <= 1; minor++)
    {
      g_autoptr(GError) error = NULL;
      g_autofree char *device = NULL, *text = NULL;

      g_assert_true (mcq_disk_irq_cpus (sys, proc, 254, minor, &set, &device, &error));
      g_assert_no_error (error);
      g_assert_cmpstr (device, ==, "0000:00:02.0");
      text = mcq_cpu_list_format (&set);
      g_assert_cmpstr (text, ==, "1");
      g_assert_true (mcq_placement_choose (&allowed, &set, &chosen));
    }

  /* One interrupt per CPU: all of them, so the main thread stays put. */
  g_autofree char *nvme = NULL;
  g_assert_true (mcq_disk_irq_cpus (sys, proc, 259, 0, &set, &nvme, NULL));
  g_assert_cmpstr (nvme, ==, "0000:00:04.0");
  g_assert_false (mcq_placement_choose (&allowed, &set, &chosen));

  /* Legacy interrupts: the walk stops at the controller, it does not take
   * the root port's. */
  g_autoptr(GError) e0 = NULL;
  g_assert_false (mcq_disk_irq_cpus (sys, proc, 8, 0, &set, NULL, &e0));
  g_assert_error (e0, G_FILE_ERROR, G_FILE_ERROR_NOENT);

  /* No interrupts of its own, and no such device. */
  g_autoptr(GError) e1 = NULL;
  g_assert_false (mcq_disk_irq_cpus (sys, proc, 253, 0, &set, NULL, &e1));
  g_assert_error (e1, G_FILE_ERROR, G_FILE_ERROR_NOENT);
  g_assert_nonnull (strstr (e1->message, "253:0"));
  g_autoptr(GError) e2 = NULL;
  g_assert_false (mcq_disk_irq_cpus (sys, proc, 8, 1, &set, NULL, &e2));
  g_assert_nonnull (e2);

  remove_tree (root);
  g_assert_false (g_file_test (root, G_FILE_TEST_EXISTS));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/placement/cpu-list", test_cpu_list);
  g_test_add_func ("/placement/choose", test_choose);
  g_test_add_func ("/placement/disk-irqs", test_disk_irqs);
  return g_test_run ();
}
