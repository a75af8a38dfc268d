// Starts Swagger UI on this gateway's own OpenAPI document; kept out of the page so that
// the page's Content-Security-Policy allows no inline script.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null,
  });
});
