// Served by `saescope serve`: the pages read the JSON API. The static export replaces this file.
window.SAESCOPE_STATIC = false;
