"""The HQ dashboard: server-rendered pages (Starlette + Jinja2) beside the JSON API.

``app`` builds it (:func:`central.web.app.create_web_app`, the page list ``PAGES``, and
``dashboard_server`` for ``onecard-central serve --http``); ``page`` is what every page
goes through (session, CSRF, roles, language, cookies, headers); ``sessions`` signs the
cookies; ``i18n`` holds the two languages' messages and formats. One module per page or
group of pages (``auth``, ``overview``, ``audit``), each with its template in
``templates/``.
"""
