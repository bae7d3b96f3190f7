/* switches.c — refuses a value given to a command-line switch, the one
 * check GOption lacks (see switches.h).  Pure: no I/O. */
#include "switches.h"

#include <string.h>

#include "i18n.h"

/* The entry named by a long option ("--no-sync" or "--no-sync=..."), or
 * NULL. */
static const GOptionEntry *
long_entry (const GOptionEntry *entries, const char *arg)
{
  size_t len = strcspn (arg + 2, "=");

  for (const GOptionEntry *e = entries; e->long_name != NULL; e++)
    if (strlen (e->long_name) == len && strncmp (arg + 2, e->long_name, len) == 0)
      return e;
  return NULL;
}

/* The entry named by a lone short option ("-H"), or NULL. */
static const GOptionEntry *
short_entry (const GOptionEntry *entries, const char *arg)
{
  for (const GOptionEntry *e = entries; e->long_name != NULL; e++)
    if (e->short_name != 0 && e->short_name == arg[1])
      return e;
  return NULL;
}

static gboolean
takes_value (const GOptionEntry *e)
{
  return e->arg != G_OPTION_ARG_NONE && !(e->flags & G_OPTION_FLAG_NO_ARG);
}

gboolean
mcq_option_check_switches (const GOptionEntry *entries, int argc, char **argv, GError **error)
{
  for (int i = 1; i < argc; i++)
    {
      const char *a = argv[i];
      gboolean is_long = g_str_has_prefix (a, "--");
      const GOptionEntry *e = NULL;

      if (strcmp (a, "--") == 0)
        break;
      if (is_long)
        e = long_entry (entries, a);
      else if (a[0] == '-' && a[1] != '\0' && a[2] == '\0')
        e = short_entry (entries, a);
      if (e == NULL)
        continue;
      if (is_long && strchr (a, '=') != NULL && !takes_value (e))
        {
          g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                       _("option --%s takes no value (“%s”): give it alone to turn it on, leave it out to keep it off"),
                       e->long_name, a);
          return FALSE;
        }
      if (strchr (a, '=') == NULL && takes_value (e))
        i++;                    /* its value is the next argument */
    }
  return TRUE;
}
