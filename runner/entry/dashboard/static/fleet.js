// The fleet page: one panel, re-rendered by the server whenever its numbers change.
import { notice, onSignedIn, replaceContent, streamEvents } from "./common.js";

const panel = document.getElementById("fleet");

onSignedIn(() => {
  streamEvents(() => "/ui/fleet/events", {
    fleet: (data) => { replaceContent(panel, data.html); notice(""); },
    broken: () => notice("Live updates interrupted; reconnecting…", "error"),
    failed: (error) => notice(error.message, "error"),
  });
});
