/* placement.c — binds the sync thread to the CPUs that take the interrupts
 * of the home's disk (durable mode), found through sysfs and
 * /proc/irq/N/effective_affinity_list; plus the CPU-list parsing it needs.
 *
 * Each group-commit fsync completes through those interrupts, so a sync
 * thread on their CPUs answers them without a cross-CPU wake-up; the main
 * thread is left to the scheduler, and -N (no disk on its hot path) is left
 * alone.  The choice is made once, when the sync thread starts.  Nothing is
 * done where it cannot help or the kernel does not say: a disk with a
 * queue per CPU (NVMe, multi-queue virtio), or one without interrupts of
 * its own in sysfs (tmpfs, device-mapper, network, legacy non-MSI).
 * Figures: doc/performance.md. */
#include "placement.h"
#include "i18n.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

gboolean
mcq_cpu_list_parse (const char *text, cpu_set_t *set)
{
  g_auto(GStrv) parts = NULL;

  CPU_ZERO (set);
  if (text == NULL)
    return FALSE;
  g_autofree char *trimmed = g_strstrip (g_strdup (text));
  if (trimmed[0] == '\0')
    return FALSE;
  parts = g_strsplit (trimmed, ",", -1);
  for (guint i = 0; parts[i] != NULL; i++)
    {
      guint64 lo, hi;
      char *end;

      if (!g_ascii_isdigit (parts[i][0]))
        return FALSE;
      lo = g_ascii_strtoull (parts[i], &end, 10);
      hi = lo;
      if (*end == '-')
        {
          if (!g_ascii_isdigit (end[1]))
            return FALSE;
          hi = g_ascii_strtoull (end + 1, &end, 10);
        }
      if (*end != '\0' || hi < lo || hi >= CPU_SETSIZE)
        return FALSE;
      for (guint64 c = lo; c <= hi; c++)
        CPU_SET ((int) c, set);
    }
  return TRUE;
}

char *
mcq_cpu_list_format (const cpu_set_t *set)
{
  GString *s = g_string_new (NULL);

  for (int c = 0; c < CPU_SETSIZE; c++)
    {
      int end = c;

      if (!CPU_ISSET (c, set))
        continue;
      while (end + 1 < CPU_SETSIZE && CPU_ISSET (end + 1, set))
        end++;
      if (s->len > 0)
        g_string_append_c (s, ',');
      if (end == c)
        g_string_append_printf (s, "%d", c);
      else
        g_string_append_printf (s, "%d-%d", c, end);
      c = end;
    }
  return g_string_free (s, FALSE);
}

/* Adds the CPUs of each interrupt listed in dir/msi_irqs; FALSE if none
 * could be read.  An empty effective list (an interrupt shut down) falls
 * back to the configured one. */
static gboolean
add_msi_cpus (const char *procfs, const char *msi_dir, cpu_set_t *cpus)
{
  g_autoptr(GDir) d = g_dir_open (msi_dir, 0, NULL);
  const char *name;
  gboolean any = FALSE;

  if (d == NULL)
    return FALSE;
  while ((name = g_dir_read_name (d)) != NULL)
    {
      static const char *const files[] = { "effective_affinity_list", "smp_affinity_list" };

      for (guint i = 0; i < G_N_ELEMENTS (files); i++)
        {
          g_autofree char *path = g_build_filename (procfs, "irq", name, files[i], NULL);
          g_autofree char *text = NULL;
          cpu_set_t one;

          if (!g_file_get_contents (path, &text, NULL, NULL) || !mcq_cpu_list_parse (text, &one))
            continue;       /* missing, or empty: try the next file */
          CPU_OR (cpus, cpus, &one);
          any = TRUE;
          break;
        }
    }
  return any;
}

gboolean
mcq_disk_irq_cpus (const char *sysfs, const char *procfs, guint major, guint minor,
                   cpu_set_t *cpus, char **device, GError **error)
{
  g_autofree char *link = g_strdup_printf ("%s/dev/block/%u:%u", sysfs, major, minor);
  g_autofree char *top = realpath (sysfs, NULL);
  g_autofree char *dir = realpath (link, NULL);

  CPU_ZERO (cpus);
  if (top == NULL || dir == NULL)
    {
      g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (errno),
                   "no block device %u:%u in %s", major, minor, sysfs);
      return FALSE;
    }
  g_autofree char *top_dir = g_strconcat (top, "/", NULL);
  /* Up from the partition or disk to the first device with MSI interrupts,
   * and no further than the first PCI device: above it are bridges and
   * root ports, whose interrupts are their own (errors, hot-plug), not the
   * disk's (a controller on legacy interrupts has no msi_irqs). */
  while (g_str_has_prefix (dir, top_dir))
    {
      g_autofree char *msi = g_build_filename (dir, "msi_irqs", NULL);
      g_autofree char *subsystem_link = NULL, *subsystem = NULL;
      char *slash;

      if (g_file_test (msi, G_FILE_TEST_IS_DIR))
        {
          if (!add_msi_cpus (procfs, msi, cpus))
            break;
          if (device != NULL)
            *device = g_path_get_basename (dir);
          return TRUE;
        }
      subsystem_link = g_build_filename (dir, "subsystem", NULL);
      subsystem = realpath (subsystem_link, NULL);
      if (subsystem != NULL && g_str_has_suffix (subsystem, "/bus/pci"))
        break;
      slash = strrchr (dir, '/');
      if (slash == NULL)
        break;
      *slash = '\0';
    }
  g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_NOENT,
               "block device %u:%u has no MSI interrupts of its own in %s", major, minor, sysfs);
  return FALSE;
}

gboolean
mcq_placement_choose (const cpu_set_t *allowed, const cpu_set_t *irq, cpu_set_t *out)
{
  cpu_set_t both;

  CPU_AND (&both, allowed, irq);
  if (CPU_COUNT (&both) == 0 || CPU_EQUAL (&both, allowed))
    return FALSE;
  *out = both;
  return TRUE;
}

void
mcq_placement_apply (const char *dir)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *device = NULL;
  cpu_set_t allowed, irq, chosen;
  struct stat st;

  if (stat (dir, &st) != 0 || major (st.st_dev) == 0)
    {
      g_debug ("CPU placement: %s is not on a block device; left alone", dir);
      return;
    }
  if (sched_getaffinity (0, sizeof allowed, &allowed) != 0)
    return;
  if (!mcq_disk_irq_cpus ("/sys", "/proc", major (st.st_dev), minor (st.st_dev), &irq,
                          &device, &error))
    {
      g_debug ("CPU placement: %s; left alone", error->message);
      return;
    }
  g_autofree char *irq_text = mcq_cpu_list_format (&irq);
  if (!mcq_placement_choose (&allowed, &irq, &chosen))
    {
      g_debug ("CPU placement: the interrupts of %s go to CPUs %s, which narrows nothing; "
               "left alone", device, irq_text);
      return;
    }
  g_autofree char *chosen_text = mcq_cpu_list_format (&chosen);
  if (sched_setaffinity (0, sizeof chosen, &chosen) != 0)
    {
      g_debug ("CPU placement: setting CPUs %s refused: %s", chosen_text, g_strerror (errno));
      return;
    }
  /* TRANSLATORS: the CPUs chosen ("4") and the disk's device
   * ("0000:00:02.0"). */
  g_info (_("fsync thread on CPUs %s, where the interrupts of the home's disk (%s) go"),
          chosen_text, device);
}
